"""LoRA adapters (peft) on the query and key projections only, for ABFT and E2E.

    add_lora(model, r=16, alpha=32.0, dropout=0.0)   # in place: q_proj/k_proj (or GPT-2's c_attn) get LoRA
    params = mark_trainable(model, find_qk_slices(model))   # then trains lora_A / lora_B only (models.trainable)
    save_adapter(model, run_dir / "adapter")         # peft.PeftModel.from_pretrained(base, that dir) loads it
    merge_adapter(model, run_dir / "adapter")        # base model + adapter -> the trained W_Q/W_K, in place

peft injects its layers into the transformers model in place, and `model` stays that transformers
model (not a PeftModel wrapper): attention capture, scoring and head statistics run it unchanged.

GPT-2's fused c_attn (Q|K|V along its output axis): LoRA adapts the whole projection, so the V rows of
lora_B are kept at exactly zero by a gradient mask (params.mark_trainable): B starts at zero, its V rows
get zero gradient, and Adam moves no element whose gradient and state are zero. The saved adapter
therefore changes Q and K only; its V rows are stored (as zeros) because peft's format has no masks.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from .. import distributed
from ..config import check_lora
from ..errors import UserError
from ..rundir import DIR_MODE, FILE_MODE
from .arch import find_qk_slices, is_lora_layer, owner

ADAPTER = "default"  # peft's adapter name
ADAPTER_DIR = "adapter"  # inside a run directory


def has_lora(model: torch.nn.Module) -> bool:
    return any(is_lora_layer(m) for m in model.modules())


@contextlib.contextmanager
def adapters_disabled(model: torch.nn.Module):
    """`model` without its LoRA updates for the block (the base model's outputs), then as before.

    peft's enable_adapters(True) marks the adapters trainable again; their requires_grad flags are restored.
    """
    layers = [m for m in model.modules() if is_lora_layer(m) and not m.disable_adapters]
    flags = [(p, p.requires_grad) for m in layers for p in m.parameters()]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield model
    finally:
        for layer in layers:
            layer.enable_adapters(True)
        for p, flag in flags:
            p.requires_grad_(flag)


def _target_pattern(model: torch.nn.Module, names: list[str]) -> str:
    """A regex that fullmatches exactly `names` among the model's modules (short: one \\d+ per layer index).

    A string, not a list: peft stores a list as a set, whose order in adapter_config.json would vary.
    """
    templates = sorted({re.escape(re.sub(r"\.\d+\.", ".LAYERIDX.", n)).replace("LAYERIDX", r"\d+") for n in names})
    pattern = "(?:" + "|".join(templates) + ")"
    matched = {n for n, _ in model.named_modules() if re.fullmatch(pattern, n)}
    if matched != set(names):
        pattern = "(?:" + "|".join(re.escape(n) for n in sorted(names)) + ")"
    return pattern


def add_lora(model: torch.nn.Module, r: int, alpha: float = 32.0, dropout: float = 0.0) -> torch.nn.Module:
    """Inject LoRA (rank r, scaling alpha / r) into every layer's query and key projections, in place."""
    from peft import LoraConfig, get_peft_model

    check_lora(r, alpha, dropout)
    if has_lora(model):
        raise UserError("the model already carries LoRA adapters; load a fresh base model")
    slices = find_qk_slices(model)
    names = sorted({owner(s.param) for s in slices})
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=_target_pattern(model, names),
        fan_in_fan_out=any(s.out_dim == 1 for s in slices),  # Conv1D stores (in, out)
        bias="none",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "fan_in_fan_out is set to True" notices
        get_peft_model(model, config, adapter_name=ADAPTER)
    model.requires_grad_(False)
    return model


def save_adapter(model: torch.nn.Module, directory: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write a peft adapter directory (adapter_config.json + adapter_model.safetensors), atomically.

    The layout is PeftModel.save_pretrained's, so `PeftModel.from_pretrained(base, directory)` loads it;
    `metadata`: more safetensors metadata (abft's base-model fingerprint; peft does not read it).
    """
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    if not has_lora(model):
        raise ValueError("save_adapter: the model has no LoRA adapter")
    directory = Path(directory)
    config = model.peft_config[ADAPTER]
    state = get_peft_model_state_dict(model, adapter_name=ADAPTER)
    # PeftModel prefixes its wrapped model with "base_model.model."; the loader expects those keys
    full = {k: distributed.full(v.detach()) for k, v in sorted(state.items())}  # FSDP shares: gathered
    tensors = {f"base_model.model.{k}": v.contiguous().cpu() for k, v in full.items()}
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp-"))
    try:
        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={**(metadata or {}), "format": "pt"})
        saved = copy.deepcopy(config)
        saved.inference_mode = True  # as PeftModel.save_pretrained writes it
        saved.save_pretrained(str(tmp))
        os.chmod(tmp, DIR_MODE)  # as mkdir() would create it (mkdtemp and safetensors make them private)
        for file in tmp.iterdir():
            os.chmod(file, FILE_MODE)
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def merge_adapter(model: torch.nn.Module, directory: str | Path) -> torch.nn.Module:
    """Load a saved adapter onto the base `model` and merge it into W_Q/W_K, in place (plain layers again)."""
    from peft import PeftModel

    directory = Path(directory)
    if not (directory / "adapter_config.json").is_file():
        raise UserError(f"no LoRA adapter at {directory}")
    if has_lora(model):
        raise UserError("merge_adapter: load the adapter onto a base model without LoRA layers")
    try:
        wrapped = PeftModel.from_pretrained(model, str(directory), adapter_name=ADAPTER)
    except (ValueError, RuntimeError, KeyError) as exc:
        raise UserError(f"{directory} does not match this model: {str(exc).splitlines()[0]}") from exc
    wrapped.merge_and_unload()
    if hasattr(model, "peft_config"):
        del model.peft_config
    model.requires_grad_(False)
    return model


def delta_weight(module: torch.nn.Module) -> torch.Tensor | None:
    """The LoRA update of a (not merged) LoRA layer, shaped like its base weight; None when not a LoRA layer."""
    if not is_lora_layer(module):
        return None
    merged = set(getattr(module, "merged_adapters", []))
    deltas = [module.get_delta_weight(a) for a in module.active_adapters if a in module.lora_A and a not in merged]
    return sum(deltas) if deltas else None
