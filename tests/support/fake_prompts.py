"""Synthetic ICL-shaped prompts for tiny models: random tokens with label tokens at known positions."""

from __future__ import annotations

from dataclasses import dataclass

import torch

LABEL_TOKENS = (10, 11)


@dataclass
class FakePrompt:
    input_ids: list[int]
    label_positions: list[int]
    demo_labels: list[int]
    gold: int
    text: str = ""


def fake_prompts(n: int, k: int = 3, seed: int = 0, vocab: int = 100, bos: int | None = None) -> list[FakePrompt]:
    """Each demo is 2-4 random tokens then a label token; the query is 2-5 random tokens."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = [] if bos is None else [bos]
        positions, labels = [], []
        for _ in range(k):
            length = int(torch.randint(2, 5, (1,), generator=g))
            ids += torch.randint(20, vocab, (length,), generator=g).tolist()
            label = int(torch.randint(0, 2, (1,), generator=g))
            positions.append(len(ids))
            labels.append(label)
            ids.append(LABEL_TOKENS[label])
        ids += torch.randint(20, vocab, (int(torch.randint(2, 6, (1,), generator=g)),), generator=g).tolist()
        out.append(FakePrompt(ids, positions, labels, int(torch.randint(0, 2, (1,), generator=g))))
    return out
