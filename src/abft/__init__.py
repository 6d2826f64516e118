"""abft: Attention Behavior Fine-Tuning."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("abft")
except PackageNotFoundError:  # a source tree on PYTHONPATH, not installed
    __version__ = "unknown"
