"""use_last_row_attention: switch a model to the registered attention, checked by a 2-token probe forward."""

from __future__ import annotations

import weakref

import torch

from ..errors import UserError
from .capture import capture_last_row
from .implementation import ATTN_IMPLEMENTATION, register_last_row_attention

# Models already switched and probed: switching them again is free.
_VERIFIED: weakref.WeakSet = weakref.WeakSet()


def _config_of(model):
    config = getattr(model, "config", None)
    if config is None:
        raise UserError(f"{type(model).__name__} has no `config`; expected a transformers model.")
    return config


def use_last_row_attention(model) -> None:
    """Switch ``model`` (a transformers causal LM, possibly PEFT-wrapped) to the last-row attention.

    Registers the function once, sets the model's attention implementation, and checks with a
    2-token forward that the architecture routes its attention through the AttentionInterface.
    Idempotent. Raises :class:`UserError` if the model cannot use it.
    """
    register_last_row_attention()
    config = _config_of(model)
    if getattr(config, "_attn_implementation", None) == ATTN_IMPLEMENTATION and model in _VERIFIED:
        return
    if not hasattr(model, "set_attn_implementation"):
        raise UserError(
            f"{type(model).__name__} is not a transformers PreTrainedModel; cannot switch its attention "
            f"to '{ATTN_IMPLEMENTATION}'."
        )
    try:
        model.set_attn_implementation(ATTN_IMPLEMENTATION)
    except (ValueError, ImportError, KeyError) as exc:
        name = type(model).__name__
        raise UserError(f"Cannot switch {name} to '{ATTN_IMPLEMENTATION}' attention: {exc}") from exc
    if getattr(config, "_attn_implementation", None) != ATTN_IMPLEMENTATION:
        raise UserError(
            f"{type(model).__name__} does not support setting its attention implementation (it does not "
            "route attention through transformers' AttentionInterface); ABFT cannot read its attention."
        )
    _probe(model)
    _VERIFIED.add(model)


def _probe(model) -> None:
    """Run a 2-token forward inside a capture; raise UserError if no attention row was recorded."""
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    pad = getattr(_config_of(model), "pad_token_id", None)
    token = 1 if pad != 1 else 2  # any real token id; avoids the "padding without a mask" warning
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad(), capture_last_row(model) as capture:
            model(input_ids=torch.full((1, 2), token, dtype=torch.long, device=device), use_cache=False)
    except UserError:
        raise
    except Exception as exc:  # any failure here means the model cannot be used
        raise UserError(
            f"A test forward of {type(model).__name__} with '{ATTN_IMPLEMENTATION}' attention failed: {exc!r}"
        ) from exc
    finally:
        for module, mode in modes:
            module.training = mode
    if not capture.rows:
        raise UserError(
            f"{type(model).__name__} does not route its attention through transformers' AttentionInterface "
            "(no attention rows were captured); ABFT cannot read its attention."
        )
