"""The ABFT loss on last-token attention and its induction-head filter (`--method abft`).

For example b, layer l, head h, with alpha = attention of the last token (B, L, H, T):
    S = sum_{j in I} alpha_j                     I: the k demonstration label positions
    induction head  iff  S > k / (k + log n_t)   n_t: prompt length in tokens (less an uncounted BOS)
    loss = A * sum_{I-} alpha_i + B * sum_{I+} (1 - alpha_i)     I+: labels equal to the gold label
summed (default) or averaged over the example's induction heads; other heads contribute nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from ..batching import label_masks
from .base import ObjectiveInputs, ObjectiveOutput

LOG_BASES = {"e": math.e, "2": 2.0, "10": 10.0}


@dataclass(frozen=True)
class ABFTObjective:
    head_reduction: Literal["sum", "mean"] = "sum"
    log_base: Literal["e", "2", "10"] = "e"
    head_filter: bool = True  # False: every head is treated as an induction head (ablation)
    uncounted_tokens: int = 0  # leading special tokens (a BOS) left out of n_t: --no-count-bos

    @classmethod
    def from_config(cls, cfg, prefix_tokens: int = 0) -> ABFTObjective:
        """The objective a TrainConfig asks for; `prefix_tokens`: special tokens the tokenizer puts first."""
        uncounted = 0 if cfg.count_bos else prefix_tokens
        return cls(cfg.head_reduction, cfg.log_base, cfg.head_filter, uncounted)

    def threshold(self, k: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """T = k / (k + log n_t), per example; `lengths`: real tokens per prompt."""
        n_tokens = lengths - self.uncounted_tokens
        log_n = torch.log(n_tokens.double()) / math.log(LOG_BASES[self.log_base])
        return (k.double() / (k.double() + log_n)).float()

    def label_attention(self, probs: torch.Tensor, label_positions: torch.Tensor) -> torch.Tensor:
        """(B, L, H, T) x (B, k) -> (B, L, H, k) attention on each demonstration label token."""
        b, layers, heads, _ = probs.shape
        index = label_positions[:, None, None, :].expand(b, layers, heads, label_positions.shape[1])
        return probs.gather(-1, index)

    def induction_heads(self, label_probs, valid, lengths) -> torch.Tensor:
        """(B, L, H) bool: heads whose label attention mass passes the threshold."""
        mass = (label_probs * valid[:, None, None, :]).sum(-1)
        if not self.head_filter:
            return torch.ones_like(mass, dtype=torch.bool)
        k = valid.sum(-1)
        return mass > self.threshold(k, lengths)[:, None, None]

    def __call__(self, probs, label_positions, demo_labels, gold, lengths, penalty: float, reward: float):
        """Per-example loss (B,) and the induction-head mask (B, L, H)."""
        label_probs = self.label_attention(probs, label_positions.clamp(min=0))
        valid, correct, wrong = label_masks(demo_labels, gold)
        heads = self.induction_heads(label_probs.detach(), valid, lengths)
        per_head = penalty * (label_probs * wrong[:, None, None, :]).sum(-1) + reward * (
            (1.0 - label_probs) * correct[:, None, None, :]
        ).sum(-1)  # (B, L, H)
        per_head = per_head * heads
        loss = per_head.sum((1, 2))
        if self.head_reduction == "mean":
            loss = loss / heads.sum((1, 2)).clamp(min=1)
        return loss, heads


class ABFT:  # --method abft (registered in objectives/__init__)
    """The ABFT loss of cfg's filter and head reduction; the logits are not used."""

    def __init__(self, cfg, prefix_tokens: int = 0, label_ids=None):
        self.objective = ABFTObjective.from_config(cfg, prefix_tokens)

    def __call__(self, step: ObjectiveInputs) -> ObjectiveOutput:
        b = step.batch
        loss, heads = self.objective(
            step.probs, b.label_positions, b.demo_labels, b.gold, b.lengths, step.penalty, step.reward
        )
        return ObjectiveOutput(loss, heads)
