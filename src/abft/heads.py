"""Per-head statistics of last-token attention on demonstration label tokens (what ABFT's filter sees).

stats = head_statistics(model, prompts, pad_id)   # arrays (L, H)
probs, parts = label_forward(model, batch, objective)   # one batch: (B, L, H, T) attention, per-prompt parts
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from .attention import capture_last_row, use_last_row_attention
from .batching import Batch, collate, length_batches
from .objectives import ABFTObjective


@torch.no_grad()
def label_forward(model, batch: Batch, objective: ABFTObjective) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One batch's last-token attention (B, L, H, T) and its per-prompt label statistics, each (B, L, H):
    label_mass, correct_mass, wrong_mass (attention on all / gold / other demonstration labels) and
    induction_rate (1.0 where the head passes ABFT's filter)."""
    use_last_row_attention(model)
    with capture_last_row(model) as cap:
        model(**batch.model_inputs(), logits_to_keep=1)  # the whole model: it may be an FSDP root
    label_probs = objective.label_attention(cap.probs, batch.label_positions.clamp(min=0))  # (B, L, H, k)
    valid = batch.demo_labels >= 0
    correct = valid & (batch.demo_labels == batch.gold[:, None])
    parts = {
        "label_mass": (label_probs * valid[:, None, None, :]).sum(-1),
        "correct_mass": (label_probs * correct[:, None, None, :]).sum(-1),
        "wrong_mass": (label_probs * (valid & ~correct)[:, None, None, :]).sum(-1),
        "induction_rate": objective.induction_heads(label_probs, valid, batch.lengths).float(),
    }
    return cap.probs, parts


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

    `extra(batch, parts)` gets label_forward's per-prompt parts and may return more per-prompt (B, L, H)
    values to average (abft.report.discovery).
    """
    objective = objective or ABFTObjective()
    device = next(model.parameters()).device
    sums: dict[str, torch.Tensor] = {}
    for idx in length_batches(prompts, batch_size):
        batch = collate([prompts[i] for i in idx], pad_id).to(device)
        _, parts = label_forward(model, batch, objective)
        if extra is not None:
            parts.update(extra(batch, parts))
        for key, value in parts.items():
            sums[key] = sums.get(key, 0) + value.sum(0).double().cpu()
    return {key: (value / len(prompts)).numpy() for key, value in sums.items()}


def heads_by_layer(mask: np.ndarray) -> dict[str, list[int]]:
    """(L, H) bool -> {layer: [heads]} of the layers with at least one head set (heads.json's listing)."""
    layers = {str(layer): [int(h) for h in np.nonzero(mask[layer])[0]] for layer in range(mask.shape[0])}
    return {k: v for k, v in layers.items() if v}


def heads_summary(stats: dict[str, np.ndarray], min_rate: float = 0.5) -> dict:
    """heads.json content: {layer: [heads]} that pass the filter on at least `min_rate` of the prompts."""
    rate = stats["induction_rate"]
    return {
        "min_rate": min_rate,
        "induction_heads": heads_by_layer(rate >= min_rate),
        "mean_heads_per_prompt": float(rate.sum()),
        **{key: np.round(value, 6).tolist() for key, value in stats.items()},
    }
