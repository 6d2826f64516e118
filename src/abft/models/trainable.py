"""Which parameters ABFT trains: the query and key projections (W_Q, W_K) of every attention layer.

    slices = find_qk_slices(model)          # models.arch: one QKSlice per layer and projection ("q" or "k")
    params = mark_trainable(model, slices)  # requires_grad on those tensors only; V slices of fused
                                            # projections (GPT-2's c_attn) get a zero-gradient mask:
    params.mask_gradients()                 # before every optimiser step
    zero_inactive_heads(grads, slices, active)   # restricted-gradient: non-induction heads' rows zeroed

A slice names a parameter and the range of output features that belong to Q or K, so separate projections
(q_proj / k_proj) and fused ones (GPT-2's c_attn, Q|K|V along its output axis) share one mechanism: gradient
masks and restricted-gradient head masks are per slice (and so are the saved tensors, models.weights).

With LoRA (models.lora) the slices still name the base W_Q/W_K; mark_trainable then trains the adapters'
lora_A / lora_B instead.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .. import distributed
from ..errors import UserError
from .arch import QKSlice, is_lora_layer, owner, qk_param
from .lora import has_lora


class TrainableParams(list):
    """mark_trainable's parameters to optimise, and the 0/1 masks of those only partly trained (the V part of
    a fused Q|K|V tensor). `mask_gradients()` applies them to the accumulated gradients before a step: one
    mechanism for a plain model and an FSDP-sharded one (whose sharded parameters never see tensor hooks)."""

    def __init__(self, params: Iterable[torch.nn.Parameter] = ()):
        super().__init__(params)
        self.masks: list[tuple[torch.nn.Parameter, torch.Tensor]] = []

    def add_mask(self, param: torch.nn.Parameter, mask: torch.Tensor) -> None:
        """`mask`: bool, shaped like the whole `param` (an FSDP share gets its own share of it)."""
        self.masks.append((param, distributed.like(mask.to(param.dtype), param)))

    @torch.no_grad()
    def mask_gradients(self) -> None:
        for param, mask in self.masks:
            if param.grad is not None:
                distributed.local(param.grad).mul_(distributed.local(mask))


def mark_trainable(model: torch.nn.Module, slices: list[QKSlice], train_bias: bool = True) -> TrainableParams:
    """Freeze everything, then train the Q/K slices; returns the parameters to optimise.

    A fused tensor (Q|K|V) gets a mask that zeroes its V part's gradient (`mask_gradients()`, before every
    step), so Adam leaves V bit-identical.
    A model with LoRA layers on its projections trains their lora_A / lora_B instead (`train_bias` unused).
    """
    model.requires_grad_(False)
    if has_lora(model):
        return _mark_lora(model, slices)
    keep: dict[str, list[tuple[QKSlice, bool]]] = {}
    for s in slices:
        keep.setdefault(s.param, []).append((s, False))
        if train_bias and s.bias:
            keep.setdefault(s.bias, []).append((s, True))
    out = TrainableParams()
    for name, owners in keep.items():
        p = qk_param(model, name)
        p.requires_grad_(True)
        out.append(p)
        mask = torch.zeros(p.shape, dtype=torch.bool, device=p.device)  # whole, also for an FSDP share
        for s, is_bias in owners:
            s.select(mask, is_bias).fill_(True)
        if not bool(mask.all()):
            out.add_mask(p, mask)
    return out


def _mark_lora(model: torch.nn.Module, slices: list[QKSlice]) -> TrainableParams:
    """lora_A / lora_B of every Q/K projection; lora_B rows outside the slices (V of a fused c_attn) masked."""
    modules = dict(model.named_modules())
    by_module: dict[str, list[QKSlice]] = {}
    for s in slices:
        by_module.setdefault(owner(s.param), []).append(s)
    out = TrainableParams()
    for name, owned in by_module.items():
        module = modules[name]
        if not is_lora_layer(module):
            raise UserError(f"{name} has no LoRA adapter while other query/key projections do")
        for adapter in module.active_adapters:
            a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight  # b: (out features, r)
            a.requires_grad_(True)
            b.requires_grad_(True)
            out += [a, b]
            rows = torch.zeros(b.shape, dtype=torch.bool, device=b.device)
            for s in owned:
                rows[s.start : s.stop] = True
            if not bool(rows.all()):
                out.add_mask(b, rows)
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
