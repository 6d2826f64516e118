"""Per-head statistics of last-token attention on demonstration label tokens (what ABFT's filter sees).

stats = head_statistics(model, prompts, pad_id)   # arrays (L, H)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from .attention import capture_last_row, use_last_row_attention
from .batching import collate, length_batches
from .objectives import ABFTObjective


@torch.no_grad()
def head_statistics(
    model,
    prompts: Sequence,
    pad_id: int,
    objective: ABFTObjective | None = None,
    batch_size: int = 8,
    extra: Callable | None = None,
) -> dict[str, np.ndarray]:
    """Mean label-attention mass, mass on correct / wrong labels, and induction-head rate per (layer, head).

    `extra(batch, label_probs)` may return more per-prompt (B, L, H) values to average (abft.report.discovery).
    """
    objective = objective or ABFTObjective()
    use_last_row_attention(model)
    device = next(model.parameters()).device
    decoder = getattr(model, model.base_model_prefix, model)
    sums: dict[str, torch.Tensor] = {}
    for idx in length_batches(prompts, batch_size):
        batch = collate([prompts[i] for i in idx], pad_id).to(device)
        with capture_last_row(model) as cap:
            decoder(**batch.model_inputs())
        label_probs = objective.label_attention(cap.probs, batch.label_positions.clamp(min=0))
        valid = batch.demo_labels >= 0
        correct = valid & (batch.demo_labels == batch.gold[:, None])
        parts = {
            "label_mass": (label_probs * valid[:, None, None, :]).sum(-1),
            "correct_mass": (label_probs * correct[:, None, None, :]).sum(-1),
            "wrong_mass": (label_probs * (valid & ~correct)[:, None, None, :]).sum(-1),
            "induction_rate": objective.induction_heads(label_probs, valid, batch.lengths).float(),
        }
        if extra is not None:
            parts.update(extra(batch, label_probs))
        for key, value in parts.items():
            sums[key] = sums.get(key, 0) + value.sum(0).double().cpu()
    return {key: (value / len(prompts)).numpy() for key, value in sums.items()}


def heads_summary(stats: dict[str, np.ndarray], min_rate: float = 0.5) -> dict:
    """heads.json content: {layer: [heads]} that pass the filter on at least `min_rate` of the prompts."""
    rate = stats["induction_rate"]
    layers = {str(layer): [int(h) for h in np.nonzero(rate[layer] >= min_rate)[0]] for layer in range(rate.shape[0])}
    return {
        "min_rate": min_rate,
        "induction_heads": {k: v for k, v in layers.items() if v},
        "mean_heads_per_prompt": float(rate.sum()),
        **{key: np.round(value, 6).tolist() for key, value in stats.items()},
    }
