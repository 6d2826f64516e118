"""Scoring, metrics and evaluation protocols.

evaluate_prompts and score_prompts load on first use (importing this package, e.g. for the calibration
registry that config.py reads, does not import the scoring stack).
"""

__all__ = ["evaluate_prompts", "score_prompts"]


def __getattr__(name: str):
    if name == "evaluate_prompts":
        from .protocols import evaluate_prompts

        return evaluate_prompts
    if name == "score_prompts":
        from .scoring import score_prompts

        return score_prompts
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
