"""Pad prompts into model inputs, and order them so batches waste little padding.

Left padding puts every prompt's last token at position T-1, which is where both the label prediction
and the ABFT attention row are read. Position ids count real tokens only, so a padded prompt gets the
same rotary/absolute positions as when it runs alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    position_ids: torch.Tensor  # (B, T)
    label_positions: torch.Tensor  # (B, k) demonstration label-token positions in padded coordinates
    demo_labels: torch.Tensor  # (B, k)
    gold: torch.Tensor  # (B,)
    lengths: torch.Tensor  # (B,) real tokens per prompt

    def to(self, device) -> Batch:
        return Batch(**{k: v.to(device) for k, v in self.__dict__.items()})

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "position_ids": self.position_ids}


def collate(prompts: Sequence, pad_id: int) -> Batch:
    """Left-pad `prompts` (objects with input_ids, label_positions, demo_labels, gold)."""
    lengths = [len(p.input_ids) for p in prompts]
    width = max(lengths)
    k = max(len(p.label_positions) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    positions = torch.zeros((len(prompts), k), dtype=torch.long)
    labels = torch.full((len(prompts), k), -1, dtype=torch.long)
    for i, p in enumerate(prompts):
        pad = width - lengths[i]
        ids[i, pad:] = torch.tensor(p.input_ids)
        mask[i, pad:] = 1
        n = len(p.label_positions)
        positions[i, :n] = torch.tensor(p.label_positions, dtype=torch.long) + pad
        labels[i, :n] = torch.tensor(p.demo_labels, dtype=torch.long)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    gold = torch.tensor([p.gold for p in prompts], dtype=torch.long)
    return Batch(ids, mask, position_ids, positions, labels, gold, torch.tensor(lengths))


def length_batches(prompts: Sequence, batch_size: int) -> Iterator[list[int]]:
    """Indices of `prompts` in batches of similar length (longest first, so memory peaks early)."""
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i].input_ids))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]
