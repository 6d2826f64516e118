"""Linear mode connectivity between two fine-tunings of the same base: θ0 + a(θ_A - θ0) + b(θ_B - θ0).

    result = interpolation_grid(model, prompts, label_ids, pad_id, n_classes, theta_a, theta_b, coords)

θ_A and θ_B are the W_Q/W_K tensors saved in two runs' delta.safetensors (values, keyed as in
models.params.trained_tensors) or their LoRA adapters merged into the base (run_weights); a tensor one run
did not train (e.g. a bias) is θ0 there. Each grid point
is computed as (1 - a - b) θ0 + a θ_A + b θ_B in float64, so (0,0), (1,0), (0,1) give θ0, θ_A, θ_B exactly.
The model is restored to θ0 afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from ..errors import UserError
from ..evaluation import evaluate_prompts
from ..models.params import QKSlice, find_qk_slices, trained_tensors


def _targets(model, slices: Sequence[QKSlice]) -> dict[str, torch.Tensor]:
    """Key -> the in-place view of the parameter slice it names."""
    params = dict(model.named_parameters())
    out = {}
    for s in slices:
        out[f"{s.param}@{s.kind}"] = params[s.param].data.narrow(s.out_dim, s.start, s.stop - s.start)
        if s.bias:
            out[f"{s.bias}@{s.kind}"] = params[s.bias].data.narrow(0, s.start, s.stop - s.start)
    return out


def check_trained(run: str | Path) -> None:
    """UserError unless `run` holds trained weights (delta.safetensors or a LoRA adapter/)."""
    from ..models.lora import ADAPTER_DIR

    run = Path(run)
    if not (run / "delta.safetensors").is_file() and not (run / ADAPTER_DIR).is_dir():
        raise UserError(f"no trained weights in {run} (a run with --no-save cannot be interpolated)")


def read_delta(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if path.is_dir():
        path = path / "delta.safetensors"
    if not path.is_file():
        raise UserError(f"no trained weights at {path} (a run with --no-save cannot be interpolated)")
    with safe_open(str(path), framework="pt") as f:
        return {key: f.get_tensor(key) for key in f.keys()}


@torch.no_grad()
def run_weights(model, run: str | Path) -> dict[str, torch.Tensor]:
    """θ of a run on its base `model`: delta.safetensors as saved, or a LoRA adapter merged (then undone)."""
    from ..models.params import load_delta

    run = Path(run)
    if (run / "delta.safetensors").is_file():
        return read_delta(run)
    check_trained(run)
    slices = find_qk_slices(model)
    base = {key: value.clone() for key, value in trained_tensors(model, slices).items()}
    load_delta(model, run)  # merges the adapter into W_Q/W_K in place
    theta = {key: value.clone() for key, value in trained_tensors(model, slices).items()}
    for key, target in _targets(model, slices).items():
        target.copy_(base[key].to(target.dtype))
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
) -> dict:
    """accuracy, nll (mean -log p(gold), label-normalised) and true_label_likelihood [i][j] at a = coords[i],
    b = coords[j]."""
    slices = find_qk_slices(model)
    targets = _targets(model, slices)
    base = {key: value.clone() for key, value in trained_tensors(model, slices).items()}
    for name, theta in (("first", theta_a), ("second", theta_b)):
        extra = sorted(set(theta) - set(targets))
        if extra:
            raise UserError(f"the {name} run's weights do not match this model (tensor '{extra[0]}')")
        for key, value in theta.items():
            if value.shape != targets[key].shape:
                raise UserError(
                    f"the {name} run's '{key}' has shape {tuple(value.shape)}, the model's {tuple(targets[key].shape)}"
                )
    gold = np.array([p.gold for p in prompts])
    n = len(coords)
    accuracy = [[0.0] * n for _ in range(n)]
    nll = [[0.0] * n for _ in range(n)]
    likelihood = [[0.0] * n for _ in range(n)]
    try:
        for i, a in enumerate(coords):
            for j, b in enumerate(coords):
                for key, target in targets.items():
                    w0 = base[key].double()
                    wa = theta_a.get(key, base[key]).double()
                    wb = theta_b.get(key, base[key]).double()
                    target.copy_(((1.0 - a - b) * w0 + a * wa + b * wb).to(target.dtype))
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
        for key, target in targets.items():
            target.copy_(base[key].to(target.dtype))
    return {
        "coords": [float(c) for c in coords],
        "prompts": len(prompts),
        "accuracy": accuracy,
        "nll": nll,
        "true_label_likelihood": likelihood,
    }
