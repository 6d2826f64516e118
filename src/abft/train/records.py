"""What training records per optimiser step, and the order of the steps (a pure function of the seed, so the
step number is all a resume needs)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import UserError


@dataclass
class StepRecord:
    step: int
    epoch: int
    loss: float
    heads: float  # mean induction heads per example
    penalty: float  # A used for this step
    reward: float
    lr: float
    examples: int
    seconds: float
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d.update(d.pop("extra"))
        return d


class TrainingDiverged(UserError):
    pass


def schedule(n: int, epochs: int, pseudo_batch_size: int, seed: int) -> list[tuple[int, list[int]]]:
    """(epoch, prompt indices) of every optimiser step: a fresh permutation per epoch, from `seed` only."""
    generator = torch.Generator().manual_seed(seed)
    steps = []
    for epoch in range(epochs):
        order = torch.randperm(n, generator=generator).tolist()
        steps += [(epoch, order[i : i + pseudo_batch_size]) for i in range(0, n, pseudo_batch_size)]
    return steps
