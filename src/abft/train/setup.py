"""What training needs from the model before the first step: the trainable W_Q/W_K (or LoRA adapters), the
attention function that captures last rows, activation checkpointing; and the model put back afterwards."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .. import distributed
from ..attention import use_last_row_attention
from ..config import TrainConfig, check_restricted_gradient
from ..errors import UserError, param
from ..models.arch import QKSlice, find_qk_slices
from ..models.lora import add_lora, has_lora
from ..models.trainable import TrainableParams, mark_trainable, zero_inactive_heads
from ..recipe import resolve as resolve_recipe


@dataclass
class Trainable:
    slices: list[QKSlice]
    params: TrainableParams
    named: list[tuple[str, torch.nn.Parameter]]  # (name, parameter) of params: restricted-gradient updates
    device: torch.device


@dataclass
class ModelState:
    """What training changes on a model besides its weights, to put back afterwards (finish): the attention
    implementation, each parameter's requires_grad, each module's train/eval mode, gradient checkpointing."""

    attn_implementation: str | None
    requires_grad: dict[int, bool] = field(default_factory=dict)  # id(parameter) -> flag
    training: list[tuple[torch.nn.Module, bool]] = field(default_factory=list)
    checkpointing: bool = False

    @classmethod
    def of(cls, model) -> ModelState:
        config = getattr(model, "config", None)
        return cls(
            getattr(config, "_attn_implementation", None),
            {id(p): p.requires_grad for p in model.parameters()},
            [(m, m.training) for m in model.modules()],
            _checkpointing(model),
        )

    def restore(self, model) -> None:
        """The model as it was; parameters added since (LoRA adapters) are left untrainable."""
        current = getattr(getattr(model, "config", None), "_attn_implementation", None)
        if self.attn_implementation is not None and current != self.attn_implementation:
            model.set_attn_implementation(self.attn_implementation)
        for p in model.parameters():
            p.requires_grad_(self.requires_grad.get(id(p), False))
        for module, mode in self.training:
            module.training = mode


def prepare(model, cfg: TrainConfig) -> Trainable:
    """Check cfg, add LoRA when asked (and not there yet), resolve the recipe, mark the trainable tensors
    (the same start on every process) and switch the model to training."""
    cfg.validate()
    if cfg.lora_r and not has_lora(model):
        add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
    resolve_recipe(cfg, model)  # a no-op for settings given (the runner resolves and records them first)
    check_restricted_gradient(cfg.restricted_gradient, has_lora(model), distributed.sharded())
    device = next(model.parameters()).device
    slices = find_qk_slices(model)
    params = mark_trainable(model, slices, cfg.train_bias)
    names = {id(p): n for n, p in model.named_parameters()}
    distributed.broadcast_params(params)  # the same start everywhere (LoRA's A is random)
    use_last_row_attention(model)
    if cfg.gradient_checkpointing:
        _enable_checkpointing(model)
    model.train()
    return Trainable(slices, params, [(names[id(p)], p) for p in params], device)


def finish(model, cfg: TrainConfig, before: ModelState) -> None:
    """The model back as it was `before` training apart from its weights (also after an error): attention
    implementation, requires_grad flags, train/eval modes and gradient checkpointing."""
    if cfg.gradient_checkpointing and not before.checkpointing:
        _disable_checkpointing(model)
    before.restore(model)


def masked_backward(loss, named: list[tuple[str, torch.Tensor]], slices, active: torch.Tensor) -> None:
    """Accumulate this example's gradient only into the rows of its induction heads (`active`: (L, Hq))."""
    if not loss.requires_grad:
        return
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    by_name = {name: g for (name, _), g in zip(named, grads, strict=True) if g is not None}
    zero_inactive_heads(by_name, slices, active)
    for name, p in named:
        if name in by_name:
            p.grad = by_name[name] if p.grad is None else p.grad + by_name[name]


def _enable_checkpointing(model) -> None:
    """Non-reentrant activation checkpointing (transformers applies it in train mode only)."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise UserError(f"{type(model).__name__} does not support {param('gradient_checkpointing')}")
    kwargs = {"use_reentrant": False}  # reentrant checkpointing would cut the captured rows' gradients
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _checkpointing(model) -> bool:
    """Whether activation checkpointing is on (transformers >= 5.2x name first: the old one warns)."""
    name = (
        "is_activation_checkpointing" if hasattr(model, "is_activation_checkpointing") else "is_gradient_checkpointing"
    )
    return bool(getattr(model, name, False))


def _disable_checkpointing(model) -> None:
    if hasattr(model, "activation_checkpointing_disable"):
        model.activation_checkpointing_disable()
    else:
        model.gradient_checkpointing_disable()
