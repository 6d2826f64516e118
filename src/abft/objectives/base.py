"""What a training objective is, and the registry `--method` chooses from.

    @register("mine", "what it does (shown in --help)")
    class Mine:
        def __init__(self, cfg: TrainConfig, prefix_tokens: int, label_ids: torch.Tensor): ...
        def __call__(self, step: ObjectiveInputs) -> ObjectiveOutput: ...

    abft run --method mine     # TrainConfig.method, `abft sweep --methods` and the CLI take their choices here

Training calls the objective once per micro-batch. It gets the last token's attention rows (the loss may
depend on them) and the last position's logits, and returns a per-example loss and, per example, the heads
it counts as induction heads: the penalty controller follows their mean count and --restricted-gradient
updates only their rows.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from ..batching import Batch


@dataclass(frozen=True)
class ObjectiveInputs:
    probs: torch.Tensor  # (B, L, H, T) fp32 attention of the last token (abft.attention.capture_last_row)
    logits: torch.Tensor  # (B, V) logits at the last position
    batch: Batch  # label positions, demonstration labels, gold labels, lengths
    penalty: float  # A of this step (abft.control)
    reward: float  # B


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor  # (B,) per-example loss; the step minimises its mean over the pseudo-batch
    heads: torch.Tensor  # (B, L, H) bool: the example's induction heads
    counts: dict[str, float] = field(default_factory=dict)  # sums over the batch, logged per example per step


@dataclass(frozen=True)
class Entry:
    build: Callable  # (cfg: TrainConfig, prefix_tokens: int, label_ids: Tensor) -> objective
    help: str


OBJECTIVES: dict[str, Entry] = {}


def register(name: str, help: str) -> Callable:
    """Class decorator: make `name` a --method choice built by the class (cfg, prefix_tokens, label_ids)."""

    def add(build: Callable) -> Callable:
        OBJECTIVES[name] = Entry(build, help)
        return build

    return add


def register_lazy(name: str, help: str, module: str, attr: str) -> None:
    """Register class `attr` of `module` as `name` without importing it (the built-ins): listing the --method
    choices, as the CLI's parser does, then imports no torch; the module loads when a run builds one."""

    def build(*args):
        return getattr(importlib.import_module(module), attr)(*args)

    OBJECTIVES[name] = Entry(build, help)


def build_objective(cfg, prefix_tokens: int, label_ids: torch.Tensor):
    """The objective cfg.method names."""
    return OBJECTIVES[cfg.method].build(cfg, prefix_tokens, label_ids)
