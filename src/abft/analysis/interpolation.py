"""Linear mode connectivity between two fine-tunings of the same base: θ0 + a(θ_A - θ0) + b(θ_B - θ0).

    base = BaseWeights(model)
    theta_a, theta_b = run_weights(model, run_a, base), run_weights(model, run_b, base)
    result = interpolation_grid(model, prompts, label_ids, pad_id, n_classes, theta_a, theta_b, coords, base=base)
    result = interpolate_runs(run_e2e, run_abft, grid=5)    # `abft interpolate`: the two runs' files, the plane

θ_A and θ_B are a run's trained W_Q/W_K (keyed as models.weights.trained_tensors): its delta.safetensors or
its LoRA adapter, loaded onto the base model and read back (run_weights); every key is present in both.
Each grid point is computed as (1 - a - b) θ0 + a θ_A + b θ_B in float64, so (0,0), (1,0), (0,1) give θ0,
θ_A, θ_B exactly. The model is restored to θ0 afterwards.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..config import RunConfig
from ..errors import UserError, param
from ..evaluation import evaluate_prompts
from ..limits import MAX_GRID, MAX_PROMPTS, check_at_least, check_at_most
from ..models.weights import BaseWeights, assign_qk, load_delta, trained_tensors
from ..rundir import atomic_write, make_output_dir, read_run_config
from .setup import load_setup


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


SHARED = (("model", "model"), ("data", "dataset"), ("data", "k"), ("data", "label_token_mode"))


def check_pair(cfg_a: RunConfig, cfg_b: RunConfig, run_a: Path, run_b: Path) -> None:
    for section, name in SHARED:
        a, b = getattr(getattr(cfg_a, section), name), getattr(getattr(cfg_b, section), name)
        if a != b:
            raise UserError(
                f"the runs differ in {param(name)} ({run_a.name}: {a!r}, {run_b.name}: {b!r}); "
                "interpolate runs of one base"
            )


def load_eval_job(cfg: RunConfig, test_samples: int):
    """(model, prompts, label_token_ids, pad_id, num_classes, dataset name): the first test prompts of a run."""
    from ..data import test_pairs

    model, tokenizer, builder, dataset = load_setup(cfg)
    prompts = builder.build_pairs(dataset, test_pairs(dataset, cfg.data.k, test_samples))
    info = dataset.info
    return model, prompts, builder.label_token_ids, tokenizer.pad_token_id, len(info.label_words), info.name


def interpolate_runs(
    run_a: str | Path,
    run_b: str | Path,
    grid: int = 5,
    span: tuple[float, float] = (0.0, 1.0),
    test_samples: int = 128,
    output: str | Path | None = None,
    batch_size: int = 16,
    loader: Callable = load_eval_job,
    log=print,
) -> dict:
    """`abft interpolate`: the grid, interpolation.json and interpolation.png in `output`."""
    from ..models.weights import check_trained
    from ..report.figures import interpolation_figure

    run_a, run_b = Path(run_a), Path(run_b)
    cfg_a, cfg_b = read_run_config(run_a), read_run_config(run_b)
    check_pair(cfg_a, cfg_b, run_a, run_b)
    check_at_least([("grid", grid, 2), ("test_samples", test_samples, 1), ("batch_size", batch_size, 1)])
    check_at_most([("grid", grid, MAX_GRID), ("test_samples", test_samples, MAX_PROMPTS)])
    if not -math.inf < span[0] < span[1] < math.inf:
        raise UserError(f"{param('span')} needs finite LOW < HIGH, got {span[0]} {span[1]}")
    check_trained(run_a)
    check_trained(run_b)
    out = Path(output) if output else run_b.parent / f"interpolate-{run_a.name}-{run_b.name}"
    if (out / "interpolation.json").exists():
        raise UserError(f"{out} already holds an interpolation.json; pick another {param('output')}")
    coords = np.linspace(span[0], span[1], grid).tolist()
    model, prompts, label_ids, pad, num_classes, dataset = loader(cfg_a, test_samples)
    base = BaseWeights(model)
    theta_a, theta_b = run_weights(model, run_a, base), run_weights(model, run_b, base)
    log(f"{grid}x{grid} grid on {len(prompts)} test prompts of {dataset}")
    result = interpolation_grid(
        model, prompts, label_ids, pad, num_classes, theta_a, theta_b, coords, batch_size, log, base=base
    )
    labels = {}
    for key, run, cfg in (("a", run_a, cfg_a), ("b", run_b, cfg_b)):
        labels[key] = {"path": str(run), "method": cfg.train.method, "label": f"{cfg.train.method} ({run.name})"}
    result = {"model": cfg_a.model.model, "dataset": dataset, "k": cfg_a.data.k, "runs": labels, **result}
    make_output_dir(out)
    atomic_write(out / "interpolation.png", interpolation_figure(result))
    atomic_write(out / "interpolation.json", json.dumps(result, indent=2) + "\n")
    log(f"wrote {out / 'interpolation.json'}")
    return result
