"""Recipes: where the training settings a user did not give come from.

    choices = resolve(cfg.train, model)   # fills cfg.lr / cfg.val_samples / cfg.keep where they are None

`paper`: the paper's settings (Adam lr 2e-5, no validation, the last step kept).
`auto` (the default): the same objective and schedule with
- a step size scaled to the model: lr = RELATIVE_LR x RMS of the W_Q/W_K entries. Adam moves every entry by
  about lr per step whatever the gradient's scale, so lr / RMS(W) is the relative change per step; models
  with q/k norms (Gemma 3) are even invariant to the scale of W, so only that ratio matters there.
  RELATIVE_LR = 3e-4 / 0.207: the lr chosen on SST-2 validation prompts for SmolLM2-135M over its W_Q/W_K scale
  (0.207: the mean of W_Q's and W_K's RMS; qk_rms over all entries gives 0.205, hence still 3e-4), which
  gives 5.7e-5 for Gemma-3-270M (RMS 0.040), near the paper's 2e-5 that works there (benchmarks/RESULTS.md).
  LoRA adapters start at zero, so they have no scale to follow: with LoRA the lr is the paper's 1e-4.
- validation prompts scored every `val_every` steps and the best step's weights kept, so a step size that
  overshoots on an unseen model costs the later steps, not the result.
Explicit settings are never changed; `resolve` returns what it chose, for config.json and the log.
"""

from __future__ import annotations

import dataclasses

import torch

from . import distributed
from .config import KEEP
from .errors import Text, param
from .models.arch import find_qk_slices, qk_param

PAPER_LR, PAPER_LORA_LR = 2e-5, 1e-4
RELATIVE_LR = 3e-4 / 0.207
AUTO_VAL_SAMPLES = 128


def resolve(cfg, model) -> dict:
    """Fill the TrainConfig fields left None from cfg.recipe; returns {"recipe", chosen fields, why}."""
    chosen: dict = {}
    if cfg.lr is None:
        if cfg.recipe == "paper":
            chosen["lr"] = PAPER_LORA_LR if cfg.lora_r else PAPER_LR
        elif cfg.lora_r:
            chosen["lr"], chosen["lr_rule"] = PAPER_LORA_LR, "LoRA: the paper's LoRA lr"
        else:
            rms = qk_rms(model)
            chosen["lr"] = float(f"{RELATIVE_LR * rms:.2g}")
            chosen["lr_rule"] = f"{RELATIVE_LR:.3g} x RMS of W_Q/W_K ({rms:.4g})"
    chosen |= validation_choices(cfg)
    for key in ("lr", "val_samples", "keep"):
        if key in chosen:
            setattr(cfg, key, chosen[key])
    return {"recipe": cfg.recipe, **chosen}


def validation_choices(cfg) -> dict:
    """The recipe's val_samples and keep where cfg leaves them None (no model needed)."""
    chosen: dict = {}
    if cfg.val_samples is None:
        chosen["val_samples"] = 0 if cfg.recipe == "paper" else AUTO_VAL_SAMPLES
    if cfg.keep is None:
        val = chosen.get("val_samples", cfg.val_samples)
        chosen["keep"] = "best" if cfg.recipe == "auto" and val else "last"
    return chosen


def check(cfg) -> None:
    """UserError before the model loads for explicit settings the recipe's own make impossible
    (`--recipe paper --keep best`: the paper's recipe scores no validation prompts); cfg is not changed."""
    dataclasses.replace(cfg, **validation_choices(cfg)).validate()


@torch.no_grad()
def qk_rms(model) -> float:
    """Root mean square of every W_Q and W_K entry (biases excluded; the Q and K parts of fused projections)."""
    total, count = 0.0, 0
    for s in find_qk_slices(model):
        w = s.select(distributed.full(qk_param(model, s.param).detach()))
        total += float(w.double().pow(2).sum())
        count += w.numel()
    return (total / count) ** 0.5


def describe(choices: dict, cfg) -> Text:
    """One line: the recipe's choices and the explicit settings that repeat them (as flags on the CLI)."""
    parts = [f"lr {cfg.lr:g}" + (f" ({choices['lr_rule']})" if "lr_rule" in choices else "")]
    val = f"validation {cfg.val_samples} prompts every {cfg.val_every} steps"
    parts.append(val if cfg.val_samples else "no validation")
    parts.append(f"keep {KEEP[cfg.keep]}")
    values = {"lr": f"{cfg.lr:g}", "val_samples": cfg.val_samples, "val_every": cfg.val_every, "keep": cfg.keep}
    settings = " ".join(param(name, value) for name, value in values.items())
    return Text(f"recipe {cfg.recipe}: {', '.join(parts)}; the same with explicit settings: {settings}")
