"""Which parameters ABFT trains: the query and key projections (W_Q, W_K) of every attention layer.

    slices = find_qk_slices(model)          # one QKSlice per layer and projection ("q" or "k")
    params = mark_trainable(model, slices)  # requires_grad on those tensors only; V slices of fused
                                            # projections (GPT-2's c_attn) get a zero-gradient mask
    save_delta(model, slices, path); load_delta(model, path)
    save_trained(model, run_dir, meta)      # delta.safetensors, or adapter/ when the model carries LoRA

With LoRA (models.lora) the slices still name the base W_Q/W_K; mark_trainable then trains the adapters'
lora_A / lora_B instead, and trained_tensors reports the effective weights (base + LoRA update).

A slice names a parameter and the range of output features that belong to Q or K, so separate
projections (q_proj / k_proj) and fused ones (GPT-2's c_attn, Q|K|V along its output axis) share one
mechanism: gradient masks, restricted-gradient head masks and saved tensors are all per slice.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import UserError
from .lora import ADAPTER_DIR, delta_weight, has_lora, is_lora_layer, merge_adapter, owner, save_adapter


@dataclass(frozen=True)
class QKSlice:
    layer: int
    kind: str  # "q" or "k"
    param: str  # name in model.named_parameters() (the weight)
    bias: str | None
    out_dim: int  # axis of the weight that indexes output features (0 for nn.Linear, 1 for Conv1D)
    start: int
    stop: int
    num_heads: int
    head_dim: int

    def head_rows(self, head: int) -> slice:
        return slice(self.start + head * self.head_dim, self.start + (head + 1) * self.head_dim)


def _head_counts(config) -> tuple[int, int, int]:
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = getattr(config, "num_attention_heads", None) or config.n_head
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    hidden = getattr(config, "hidden_size", None) or config.n_embd
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    return heads, kv_heads, head_dim


def find_qk_slices(model: torch.nn.Module) -> list[QKSlice]:
    """Locate W_Q and W_K of every attention layer, in layer order."""
    heads, kv_heads, head_dim = _head_counts(model.config)
    names = {id(p): n for n, p in model.named_parameters()}
    slices: list[QKSlice] = []
    layer = 0
    for module in model.modules():
        q, k = getattr(module, "q_proj", None), getattr(module, "k_proj", None)
        c_attn = getattr(module, "c_attn", None)
        c_attn = getattr(c_attn, "base_layer", c_attn)  # peft LoRA wrapper
        idx = getattr(module, "layer_idx", None)
        idx = layer if idx is None else idx
        if q is not None and k is not None:
            for kind, proj, n in (("q", q, heads), ("k", k, kv_heads)):
                proj = getattr(proj, "base_layer", proj)  # peft LoRA wrapper
                bias = names.get(id(proj.bias)) if getattr(proj, "bias", None) is not None else None
                slices.append(QKSlice(idx, kind, names[id(proj.weight)], bias, 0, 0, n * head_dim, n, head_dim))
            layer += 1
        elif (
            c_attn is not None
            and type(c_attn).__name__ == "Conv1D"
            and not getattr(module, "is_cross_attention", False)
        ):
            width = heads * head_dim  # Conv1D weight is (in, 3*width): columns Q | K | V
            bias = names.get(id(c_attn.bias)) if c_attn.bias is not None else None
            for i, kind in enumerate("qk"):
                w = names[id(c_attn.weight)]
                slices.append(QKSlice(idx, kind, w, bias, 1, i * width, (i + 1) * width, heads, head_dim))
            layer += 1
    if not slices:
        raise UserError(
            f"cannot find query/key projections in {type(model).__name__}: supported are q_proj/k_proj "
            "attention modules and GPT-2-style fused c_attn"
        )
    return slices


def _select(tensor: torch.Tensor, s: QKSlice, is_bias: bool) -> torch.Tensor:
    dim = 0 if is_bias else s.out_dim
    return tensor.narrow(dim, s.start, s.stop - s.start)


def mark_trainable(model: torch.nn.Module, slices: list[QKSlice], train_bias: bool = True) -> list[torch.nn.Parameter]:
    """Freeze everything, then train the Q/K slices; returns the parameters to optimise.

    A fused tensor (Q|K|V) gets a gradient hook that zeroes its V part, so Adam leaves V bit-identical.
    A model with LoRA layers on its projections trains their lora_A / lora_B instead (`train_bias` unused).
    """
    model.requires_grad_(False)
    if has_lora(model):
        return _mark_lora(model, slices)
    params = dict(model.named_parameters())
    keep: dict[str, list[tuple[QKSlice, bool]]] = {}
    for s in slices:
        keep.setdefault(s.param, []).append((s, False))
        if train_bias and s.bias:
            keep.setdefault(s.bias, []).append((s, True))
    out = []
    for name, owners in keep.items():
        p = params[name]
        p.requires_grad_(True)
        out.append(p)
        mask = torch.zeros_like(p, dtype=torch.bool)
        for s, is_bias in owners:
            _select(mask, s, is_bias).fill_(True)
        if not bool(mask.all()):
            p.register_hook(lambda g, m=mask: g * m)
    return out


def _mark_lora(model: torch.nn.Module, slices: list[QKSlice]) -> list[torch.nn.Parameter]:
    """lora_A / lora_B of every Q/K projection; lora_B rows outside the slices (V of a fused c_attn) masked."""
    modules = dict(model.named_modules())
    by_module: dict[str, list[QKSlice]] = {}
    for s in slices:
        by_module.setdefault(owner(s.param), []).append(s)
    out = []
    for name, owned in by_module.items():
        module = modules[name]
        if not is_lora_layer(module):
            raise UserError(f"{name} has no LoRA adapter while other query/key projections do")
        for adapter in module.active_adapters:
            a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight  # b: (out features, r)
            a.requires_grad_(True)
            b.requires_grad_(True)
            out += [a, b]
            rows = torch.zeros(b.shape[0], 1, dtype=torch.bool, device=b.device)
            for s in owned:
                rows[s.start : s.stop] = True
            if not bool(rows.all()):
                b.register_hook(lambda g, m=rows: g * m)
    return out


def zero_inactive_heads(grads: dict[str, torch.Tensor], slices: list[QKSlice], active: torch.Tensor) -> None:
    """--restricted-gradient: zero, in place, the gradient rows of heads that are not induction heads.

    `grads` maps parameter names to gradients; `active` (L, Hq) bool: the query heads that are induction
    heads for the current example. A key head (grouped-query attention) stays trainable when any query
    head of its group is active.
    """
    for s in slices:
        heads = active[s.layer]
        if s.kind == "k" and s.num_heads != heads.numel():
            heads = heads.view(s.num_heads, -1).any(dim=1)
        inactive = (~heads).nonzero().flatten().tolist()
        for name, is_bias in ((s.param, False), (s.bias, True)):
            grad = grads.get(name) if name else None
            if grad is None:
                continue
            dim = 0 if is_bias else s.out_dim
            for h in inactive:
                grad.narrow(dim, s.head_rows(h).start, s.head_dim).zero_()


def _effective_weight(model: torch.nn.Module, name: str, params: dict) -> torch.Tensor:
    """A projection's weight as the model uses it: with LoRA, base (dequantised if 4-bit) + the LoRA update."""
    module = model.get_submodule(owner(name))
    delta = delta_weight(module)
    if delta is None:
        return params[name].detach()
    weight = module.base_layer.weight
    if getattr(weight, "quant_state", None) is not None:  # bitsandbytes 4-bit
        from peft.utils.integrations import dequantize_module_weight

        weight = dequantize_module_weight(module.base_layer)
    weight = weight.detach()
    return weight + delta.detach().to(weight.dtype)


def trained_tensors(model: torch.nn.Module, slices: list[QKSlice]) -> dict[str, torch.Tensor]:
    """The Q/K slices' current values, keyed '<param>@<kind>' (bias: '<bias>@<kind>').

    With LoRA these are the effective weights (base + update), so norms of the change mean the same thing.
    """
    params = dict(model.named_parameters())
    out = {}
    for s in slices:
        out[f"{s.param}@{s.kind}"] = _select(_effective_weight(model, s.param, params), s, False).contiguous().cpu()
        if s.bias:
            out[f"{s.bias}@{s.kind}"] = _select(params[s.bias].detach(), s, True).contiguous().cpu()
    return out


def save_delta(model: torch.nn.Module, slices: list[QKSlice], path: Path, meta: dict | None = None) -> None:
    """Write the trained W_Q/W_K values (not differences) to a safetensors file, atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    # one metadata key: safetensors does not keep the order of several, and the file must be byte-stable
    metadata = {"abft": json.dumps({"format": "abft-qk", **(meta or {})}, sort_keys=True)}
    save_file(trained_tensors(model, slices), str(tmp), metadata=metadata)
    tmp.replace(path)


def save_trained(model: torch.nn.Module, directory: str | Path, meta: dict | None = None) -> Path:
    """Save what training changed into a run directory: adapter/ (LoRA) or delta.safetensors; returns it."""
    directory = Path(directory)
    if has_lora(model):
        return save_adapter(model, directory / ADAPTER_DIR)
    save_delta(model, find_qk_slices(model), directory / "delta.safetensors", meta)
    return directory / "delta.safetensors"


def load_delta(model: torch.nn.Module, path: str | Path, slices: Iterable[QKSlice] | None = None) -> None:
    """Copy saved W_Q/W_K values into `model` in place (a run directory or the .safetensors file).

    A run directory with a LoRA adapter (adapter/) is merged into the base weights (models.lora.merge_adapter).
    """
    path = Path(path)
    if path.is_dir() and (path / ADAPTER_DIR).is_dir() and not (path / "delta.safetensors").exists():
        merge_adapter(model, path / ADAPTER_DIR)
        return
    if path.is_dir() and (path / "adapter_config.json").is_file():
        merge_adapter(model, path)
        return
    if path.is_dir():
        path = path / "delta.safetensors"
    if not path.is_file():
        raise UserError(f"no trained weights at {path}")
    slices = list(slices) if slices is not None else find_qk_slices(model)
    params = dict(model.named_parameters())
    by_key = {}
    for s in slices:
        by_key[f"{s.param}@{s.kind}"] = (s, s.param, False)
        if s.bias:
            by_key[f"{s.bias}@{s.kind}"] = (s, s.bias, True)
    try:
        handle = safe_open(str(path), framework="pt")
    except Exception as exc:  # SafetensorError / OSError: damaged, truncated or not a safetensors file
        raise UserError(f"{path} is not a readable safetensors file ({type(exc).__name__}); train it again") from exc
    with handle as f:
        keys = set(f.keys())
        if keys != set(by_key):
            extra = sorted(keys - set(by_key))
            what = f"it has tensor '{extra[0]}'" if extra else f"it lacks tensor '{sorted(set(by_key) - keys)[0]}'"
            raise UserError(f"{path} does not match this model ({what}); load it onto its base model")
        for key in sorted(keys):  # every shape first: a mismatch leaves the model unchanged
            s, name, is_bias = by_key[key]
            shape, want = tuple(f.get_slice(key).get_shape()), tuple(_select(params[name], s, is_bias).shape)
            if shape != want:
                raise UserError(f"{path}: '{key}' has shape {shape}, the model {want}; load it onto its base model")
        with torch.no_grad():
            for key in keys:
                s, name, is_bias = by_key[key]
                target = _select(params[name].data, s, is_bias)
                target.copy_(f.get_tensor(key).to(target.dtype))
