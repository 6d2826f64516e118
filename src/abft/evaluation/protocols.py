"""Evaluation protocols: each takes scored prompts and returns a flat dict of numbers for metrics.json."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .metrics import classification_metrics
from .scoring import score_prompts


def recency_copy_rate(predictions: np.ndarray, prompts: Sequence) -> float:
    """Fraction of predictions equal to the last demonstration's label (the recency bias of small LMs)."""
    last = np.array([p.demo_labels[-1] if p.demo_labels else -1 for p in prompts])
    return float(np.mean(predictions == last))


def evaluate_prompts(
    model, prompts: Sequence, label_token_ids, pad_id: int, num_classes: int, batch_size=16, description="evaluating"
) -> tuple[dict, np.ndarray]:
    """Accuracy, macro-F1, true-label likelihood, ECE and the recency copy rate on `prompts`."""
    probs = score_prompts(model, prompts, label_token_ids, pad_id, batch_size, description)
    return prompt_metrics(probs, prompts, num_classes), probs


def prompt_metrics(probs: np.ndarray, prompts: Sequence, num_classes: int) -> dict:
    """The metrics of `evaluate_prompts` from already scored (N, C) label distributions of `prompts`."""
    gold = np.array([p.gold for p in prompts])
    result = classification_metrics(probs, gold, num_classes)
    result["copies_last_label"] = recency_copy_rate(probs.argmax(-1), prompts)
    result["prompts"] = len(prompts)
    return result
