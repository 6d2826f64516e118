"""load_delta at the import path README.md gave before models/params.py was split into models.trainable
(which parameters train) and models.weights (saving and loading them); kept for code written against it."""

from .weights import load_delta

__all__ = ["load_delta"]
