"""Scoring, metrics and evaluation protocols."""

from .protocols import evaluate_prompts
from .scoring import score_prompts

__all__ = ["evaluate_prompts", "score_prompts"]
