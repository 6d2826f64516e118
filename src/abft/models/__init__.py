"""Model loading and the parameters ABFT trains."""

from .loading import ALIASES, DEFAULT_MODEL, load_model

__all__ = ["ALIASES", "DEFAULT_MODEL", "load_model"]
