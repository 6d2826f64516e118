"""Architecture facts in one place: where W_Q and W_K live in a transformers model, and how many heads they hold.

    slices = find_qk_slices(model)     # one QKSlice per layer and projection ("q" or "k"), in layer order

Two attention layouts are known: separate q_proj / k_proj modules (Llama, Qwen2, Gemma, ...) and GPT-2's
fused c_attn (a Conv1D whose outputs are Q | K | V); a new layout is one more branch of find_qk_slices.
A peft LoRA wrapper around a projection is looked through (base_layer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UserError


def is_lora_layer(module: torch.nn.Module) -> bool:
    return hasattr(module, "lora_A") and hasattr(module, "base_layer")


def base_layer(module: torch.nn.Module) -> torch.nn.Module:
    """The layer a peft LoRA wrapper wraps; any other module itself."""
    return module.base_layer if is_lora_layer(module) else module


def owner(param_name: str) -> str:
    """Module name of a projection from its weight's (or bias's) name: the LoRA wrapper's, with LoRA."""
    return param_name.rsplit(".", 1)[0]


@dataclass(frozen=True)
class QKSlice:
    layer: int
    kind: str  # "q" or "k"
    param: str  # '<module>.weight': its name in the plain model's named_parameters() (qk_param resolves it)
    bias: str | None
    out_dim: int  # axis of the weight that indexes output features (0 for nn.Linear, 1 for Conv1D)
    start: int
    stop: int
    num_heads: int
    head_dim: int

    def head_rows(self, head: int) -> slice:
        return slice(self.start + head * self.head_dim, self.start + (head + 1) * self.head_dim)

    def select(self, tensor: torch.Tensor, is_bias: bool = False) -> torch.Tensor:
        """This slice's part (a view) of its whole weight, or of its bias (`is_bias`: features on axis 0)."""
        return tensor.narrow(0 if is_bias else self.out_dim, self.start, self.stop - self.start)


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
    slices: list[QKSlice] = []
    layer = 0
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        q, k = getattr(module, "q_proj", None), getattr(module, "k_proj", None)
        c_attn = getattr(module, "c_attn", None)
        idx = getattr(module, "layer_idx", None)
        idx = layer if idx is None else idx
        if q is not None and k is not None:
            for kind, proj, n in (("q", "q_proj", heads), ("k", "k_proj", kv_heads)):
                has_bias = getattr(base_layer(getattr(module, proj)), "bias", None) is not None
                bias = f"{prefix}{proj}.bias" if has_bias else None
                slices.append(QKSlice(idx, kind, f"{prefix}{proj}.weight", bias, 0, 0, n * head_dim, n, head_dim))
            layer += 1
        elif (
            c_attn is not None
            and type(base_layer(c_attn)).__name__ == "Conv1D"
            and not getattr(module, "is_cross_attention", False)
        ):
            width = heads * head_dim  # Conv1D weight is (in, 3*width): columns Q | K | V
            bias = f"{prefix}c_attn.bias" if base_layer(c_attn).bias is not None else None
            for i, kind in enumerate("qk"):
                w = f"{prefix}c_attn.weight"
                slices.append(QKSlice(idx, kind, w, bias, 1, i * width, (i + 1) * width, heads, head_dim))
            layer += 1
    if not slices:
        raise UserError(
            f"cannot find query/key projections in {type(model).__name__}: supported are q_proj/k_proj "
            "attention modules and GPT-2-style fused c_attn"
        )
    return slices


def qk_param(model: torch.nn.Module, name: str) -> torch.nn.Parameter:
    """The parameter a slice names ('<module>.weight' or '.bias'), inside a peft LoRA wrapper too."""
    module, attr = name.rsplit(".", 1)
    return getattr(base_layer(model.get_submodule(module)), attr)
