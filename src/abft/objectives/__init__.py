"""Training objectives: a protocol (base.py), a registry, and one module per objective.

    objective = build_objective(cfg, prefix_tokens, label_ids)   # cfg.method's
    out = objective(ObjectiveInputs(probs, logits, batch, penalty, reward))   # out.loss (B,), out.heads (B, L, H)

ABFTObjective (abft.py) is also the induction-head filter every analysis shares.
"""

from .abft import ABFTObjective
from .base import OBJECTIVES, ObjectiveInputs, ObjectiveOutput, build_objective, register
from .e2e import e2e_loss

__all__ = [
    "OBJECTIVES",
    "ABFTObjective",
    "ObjectiveInputs",
    "ObjectiveOutput",
    "build_objective",
    "e2e_loss",
    "register",
]
