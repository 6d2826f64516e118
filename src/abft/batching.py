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

    def label_masks(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return label_masks(self.demo_labels, self.gold)


def label_masks(demo_labels: torch.Tensor, gold: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(valid, correct, wrong) demonstration labels, each (B, k) bool: valid excludes the -1 padding of
    prompts with fewer than k demonstrations; correct = valid and equal to the gold label."""
    valid = demo_labels >= 0
    correct = valid & (demo_labels == gold[:, None])
    return valid, correct, valid & ~correct


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pad token id `rows` to the longest: (input_ids, attention_mask, position_ids), each (B, T) long."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        pad = width - len(row)
        ids[i, pad:] = torch.as_tensor(row, dtype=torch.long)
        mask[i, pad:] = 1
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def collate(prompts: Sequence, pad_id: int) -> Batch:
    """Left-pad `prompts` (objects with input_ids, label_positions, demo_labels, gold)."""
    ids, mask, position_ids = left_pad([p.input_ids for p in prompts], pad_id)
    lengths = [len(p.input_ids) for p in prompts]
    width = ids.shape[1]
    k = max(len(p.label_positions) for p in prompts)
    positions = torch.zeros((len(prompts), k), dtype=torch.long)
    labels = torch.full((len(prompts), k), -1, dtype=torch.long)
    for i, p in enumerate(prompts):
        n = len(p.label_positions)
        positions[i, :n] = torch.tensor(p.label_positions, dtype=torch.long) + width - lengths[i]
        labels[i, :n] = torch.tensor(p.demo_labels, dtype=torch.long)
    gold = torch.tensor([p.gold for p in prompts], dtype=torch.long)
    return Batch(ids, mask, position_ids, positions, labels, gold, torch.tensor(lengths))


def length_batches(prompts: Sequence, batch_size: int) -> Iterator[list[int]]:
    """Indices of `prompts` in batches of similar length (longest first, so memory peaks early)."""
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i].input_ids))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]
