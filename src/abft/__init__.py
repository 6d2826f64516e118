"""abft: Attention Behavior Fine-Tuning.

The public Python API (abft.api, loaded on first use so that `import abft` stays cheap):

    abft.prompts(tokenizer, examples, label_words, k=4)      # in-context prompts from your own examples
    abft.fit(model, tokenizer, prompts, method="abft", ...)   # train W_Q/W_K of a model object in place
    abft.evaluate(model, tokenizer, prompts)                  # metrics + per-prompt predictions
    abft.save(model, directory) / abft.load(model, directory)
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("abft")
except PackageNotFoundError:  # a source tree on PYTHONPATH, not installed
    __version__ = "unknown"

_API = ("Prompts", "evaluate", "fit", "load", "prompts", "save")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'abft' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
