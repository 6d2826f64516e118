"""Training objectives: a protocol (base.py), a registry, and one module per objective.

    objective = build_objective(cfg, prefix_tokens, label_ids)   # cfg.method's
    out = objective(ObjectiveInputs(probs, logits, batch, penalty, reward))   # out.loss (B,), out.heads (B, L, H)

ABFTObjective (abft.py) is also the induction-head filter every analysis shares. The built-in objectives
and these names load on first use (they import torch), so `abft --help` lists the methods without torch.
"""

from .base import OBJECTIVES, ObjectiveInputs, ObjectiveOutput, build_objective, register, register_lazy

register_lazy("abft", "attention loss, W_Q/W_K", "abft.objectives.abft", "ABFT")
register_lazy("e2e", "cross-entropy of the gold label", "abft.objectives.e2e", "E2E")

_LAZY = {"ABFTObjective": "abft.objectives.abft", "e2e_loss": "abft.objectives.e2e"}

__all__ = [
    "OBJECTIVES",
    "ABFTObjective",
    "ObjectiveInputs",
    "ObjectiveOutput",
    "build_objective",
    "e2e_loss",
    "register",
]


def __getattr__(name: str):
    import importlib

    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
