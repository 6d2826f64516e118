"""Linear mode connectivity between two fine-tunings of the same base: θ0 + a(θ_A - θ0) + b(θ_B - θ0).

    base = BaseWeights(model)
    theta_a, theta_b = run_weights(model, run_a, base), run_weights(model, run_b, base)
    result = interpolation_grid(model, prompts, label_ids, pad_id, n_classes, theta_a, theta_b, coords, base=base)

θ_A and θ_B are a run's trained W_Q/W_K (keyed as models.params.trained_tensors): its delta.safetensors or
its LoRA adapter, loaded onto the base model and read back (run_weights); every key is present in both.
Each grid point is computed as (1 - a - b) θ0 + a θ_A + b θ_B in float64, so (0,0), (1,0), (0,1) give θ0,
θ_A, θ_B exactly. The model is restored to θ0 afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..evaluation import evaluate_prompts
from ..models.params import BaseWeights, assign_qk, load_delta, trained_tensors


@torch.no_grad()
def run_weights(model, run: str | Path, base: BaseWeights | None = None) -> dict[str, torch.Tensor]:
    """θ of a run on its base `model` (delta.safetensors copied in, or a LoRA adapter merged), then undone.

    `base`: the model's BaseWeights, made here when not given.
    """
    base = base or BaseWeights(model)
    load_delta(model, run)
    theta = trained_tensors(model, base.slices)
    base.restore(model)
    return theta


@torch.no_grad()
def interpolation_grid(
    model,
    prompts: Sequence,
    label_token_ids: Sequence[int],
    pad_id: int,
    num_classes: int,
    theta_a: dict[str, torch.Tensor],
    theta_b: dict[str, torch.Tensor],
    coords: Sequence[float],
    batch_size: int = 16,
    log=None,
    base: BaseWeights | None = None,
) -> dict:
    """accuracy, nll (mean -log p(gold), label-normalised) and true_label_likelihood [i][j] at a = coords[i],
    b = coords[j]; `base`: the model's BaseWeights (θ0), made here when not given."""
    base = base or BaseWeights(model)
    w0 = base.tensors(model)
    gold = np.array([p.gold for p in prompts])
    n = len(coords)
    accuracy = [[0.0] * n for _ in range(n)]
    nll = [[0.0] * n for _ in range(n)]
    likelihood = [[0.0] * n for _ in range(n)]
    try:
        for i, a in enumerate(coords):
            for j, b in enumerate(coords):
                point = {  # float64, one tensor at a time, then the model's dtype
                    key: ((1.0 - a - b) * w.double() + a * theta_a[key].double() + b * theta_b[key].double()).to(
                        w.dtype
                    )
                    for key, w in w0.items()
                }
                assign_qk(model, point, base.slices)
                result, probs = evaluate_prompts(
                    model, prompts, label_token_ids, pad_id, num_classes, batch_size, f"a={a:g} b={b:g}"
                )
                accuracy[i][j] = float(result["accuracy"])
                likelihood[i][j] = float(result["true_label_likelihood"])
                picked = np.clip(probs[np.arange(len(gold)), gold], 1e-300, None)
                nll[i][j] = float(np.mean(-np.log(picked)))
                if log:
                    log(f"a={a:+.3f} b={b:+.3f}: accuracy {accuracy[i][j]:.4f}  NLL {nll[i][j]:.4f}")
    finally:
        base.restore(model)
    return {
        "coords": [float(c) for c in coords],
        "prompts": len(prompts),
        "accuracy": accuracy,
        "nll": nll,
        "true_label_likelihood": likelihood,
    }
