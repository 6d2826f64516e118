"""The E2E baseline (`--method e2e`): cross-entropy of the gold label token at the last position.

Its induction heads are ABFT's filter on the same rows, so the penalty controller and the records follow
the same count under both methods.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .abft import ABFTObjective
from .base import ObjectiveInputs, ObjectiveOutput


def e2e_loss(last_logits: torch.Tensor, gold: torch.Tensor, label_token_ids: torch.Tensor, over: str = "vocab"):
    """Per-example cross-entropy of the gold label token at the last position.

    over="vocab": softmax over the whole vocabulary (standard LM fine-tuning); over="labels": only over
    the label tokens (a classifier head made of the label words).
    """
    target = label_token_ids[gold]
    logits = last_logits.float()
    if over == "labels":
        return F.cross_entropy(logits[:, label_token_ids], gold, reduction="none")
    return F.cross_entropy(logits, target, reduction="none")


class E2E:  # --method e2e (registered in objectives/__init__)
    """E2E's loss over cfg.e2e_over; counts train_accuracy (argmax over the label tokens = gold)."""

    def __init__(self, cfg, prefix_tokens: int, label_ids: torch.Tensor):
        self.filter = ABFTObjective.from_config(cfg, prefix_tokens)
        self.label_ids, self.over = label_ids, cfg.e2e_over

    def __call__(self, step: ObjectiveInputs) -> ObjectiveOutput:
        b = step.batch
        _, heads = self.filter(
            step.probs, b.label_positions, b.demo_labels, b.gold, b.lengths, step.penalty, step.reward
        )
        loss = e2e_loss(step.logits, b.gold, self.label_ids, self.over)
        correct = int((step.logits[:, self.label_ids].argmax(-1) == b.gold).sum())
        return ObjectiveOutput(loss, heads, {"train_accuracy": correct})
