"""capture_last_row: the last real row of every layer's attention during one forward, with gradients.

While a capture is active, the registered attention function hands it each layer's query, key and mask; the
capture computes ``softmax(q_last K^T * scaling + mask_row)`` in fp32 for the one query row per sequence
(rows.py), keeps it in the autograd graph and records it in layer order.

Gradient checkpointing: non-reentrant checkpointing (transformers' default, ``use_reentrant=False``) is
supported. The row computation runs under identity ``saved_tensors_hooks`` so it saves its few tensors normally
instead of through the checkpoint's hooks; the recomputation in backward therefore does not need to reproduce it
and the rows are recorded once (calls made while the autograd engine runs a backward are never recorded).
Reentrant checkpointing runs the forward under ``no_grad`` (the rows would carry no gradient), so
:class:`capture_last_row` raises a :class:`UserError` for it.

Attention dropout (training mode, e.g. GPT-2's ``attn_pdrop``) is applied by SDPA to the output only; the
captured rows are the pre-dropout probabilities.
"""

from __future__ import annotations

import functools

import torch

from .. import distributed
from ..errors import UserError
from .implementation import ACTIVE
from .rows import LastPositions, last_row_logits, row_probs


def _identity(tensor):
    return tensor


def _in_backward() -> bool:
    """True while the autograd engine runs a backward pass (e.g. checkpoint recomputation)."""
    return torch._C._current_graph_task_id() != -1


def _uses_reentrant_checkpointing(model) -> bool:
    if not getattr(model, "training", False):
        return False
    for module in model.modules():
        if getattr(module, "gradient_checkpointing", False) is True and module.training:
            func = getattr(module, "_gradient_checkpointing_func", None)
            if isinstance(func, functools.partial):
                # torch's checkpoint treats a missing/None use_reentrant as True.
                if func.keywords.get("use_reentrant") in (None, True):
                    return True
    return False


def _fsdp_units(model) -> dict[int, object]:
    """id(module) -> the innermost FSDP2 unit (FSDPModule) holding it, for a model sharded by fully_shard."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch without distributed support
        return {}
    units: dict[int, object] = {}

    def visit(module, unit) -> None:
        unit = module if isinstance(module, FSDPModule) else unit
        if unit is not None:
            units[id(module)] = unit
        for child in module.children():
            visit(child, unit)

    visit(model, None)
    return units


def _unshard(unit, grad: torch.Tensor) -> torch.Tensor:
    unit.unshard()
    return grad


class capture_last_row:
    """Context manager recording, during one forward, the last real row of every layer's attention.

    ``last_index`` (B,) gives the query position of the last real token per row (right padding);
    ``None`` means position T-1 for every row (left padding or no padding).

    After the forward, :attr:`probs` is a (B, L, H_q, T_kv) fp32 tensor, differentiable with respect
    to the query and key projections. :attr:`rows` is the per-layer list of (B, H_q, T_kv) tensors
    and :attr:`layer_indices` their layer numbers.
    """

    def __init__(self, model, last_index: torch.Tensor | None = None):
        self.model = model
        self._positions = LastPositions(last_index)
        self._entries: list[tuple[int | None, int, torch.Tensor]] = []
        self._seen: set[int] = set()
        self._module_ids: frozenset[int] = frozenset()
        self._probs: torch.Tensor | None = None

    # -- context manager -------------------------------------------------------------------------
    def __enter__(self) -> capture_last_row:
        if getattr(ACTIVE, "capture", None) is not None:
            raise RuntimeError("capture_last_row cannot be nested")
        if torch.is_grad_enabled() and _uses_reentrant_checkpointing(self.model):
            raise UserError(
                "Reentrant gradient checkpointing runs the forward without gradients, so attention rows "
                "cannot be trained through; enable checkpointing with "
                "gradient_checkpointing_kwargs={'use_reentrant': False} (the transformers default)."
            )
        self._entries = []
        self._seen = set()
        self._probs = None
        self._positions.clear()
        self._module_ids = frozenset(id(module) for module in self.model.modules())
        self._fsdp_units = _fsdp_units(self.model) if distributed.sharded() else {}  # no walk on the hot path
        ACTIVE.capture = self
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if getattr(ACTIVE, "capture", None) is self:
            ACTIVE.capture = None

    # -- results ---------------------------------------------------------------------------------
    @property
    def rows(self) -> list[torch.Tensor]:
        """Per-layer (B, H_q, T_kv) fp32 probabilities, in layer order."""
        return [row for _, _, row in self._ordered()]

    @property
    def layer_indices(self) -> list[int | None]:
        return [layer for layer, _, _ in self._ordered()]

    @property
    def probs(self) -> torch.Tensor:
        """(B, L, H_q, T_kv) fp32 last-row attention probabilities of every layer."""
        if self._probs is None:
            rows = self.rows
            if not rows:
                raise RuntimeError(
                    "no attention rows were captured: run the forward inside the capture, after "
                    "use_last_row_attention(model)"
                )
            shapes = {tuple(row.shape) for row in rows}
            if len(shapes) != 1:
                raise RuntimeError(f"layers have different attention shapes {sorted(shapes)}; use .rows")
            device = rows[0].device
            self._probs = torch.stack([row.to(device) for row in rows], dim=1)
        return self._probs

    def _ordered(self):
        entries = self._entries
        if entries and all(layer is not None for layer, _, _ in entries):
            return sorted(entries, key=lambda entry: (entry[0], entry[1]))
        return entries

    # -- recording (called from the attention function) ------------------------------------------
    def _record(self, module, query, key, attention_mask, kwargs) -> None:
        if id(module) not in self._module_ids or _in_backward():
            return
        if id(module) in self._seen:
            raise RuntimeError(
                f"attention layer {getattr(module, 'layer_idx', '?')} ran twice inside one capture_last_row; "
                "use one capture per forward pass"
            )
        if kwargs.get("position_bias") is not None:
            name = type(module).__name__
            raise UserError(f"{name} uses a position bias, which last-row capture does not support.")
        self._seen.add(id(module))
        if torch.is_grad_enabled():
            # Save tensors normally, not through gradient-checkpointing hooks: the recomputation in
            # backward then need not (and does not) reproduce this computation.
            with torch.autograd.graph.saved_tensors_hooks(_identity, _identity):
                row = self._compute(module, query, key, attention_mask, kwargs)
        else:
            row = self._compute(module, query, key, attention_mask, kwargs)
        unit = self._fsdp_units.get(id(module))
        if unit is not None and row.requires_grad:
            # The row is not an output of its FSDP unit (the decoder layer), so FSDP's own pre-backward hook
            # does not gather the unit's weights before the row's backward needs them: gather them here.
            row.register_hook(functools.partial(_unshard, unit))
        layer = getattr(module, "layer_idx", None)
        self._entries.append((layer if isinstance(layer, int) else None, len(self._entries), row))
        self._probs = None

    def _compute(self, module, query, key, attention_mask, kwargs) -> torch.Tensor:
        """(B, H_q, T_kv) fp32 probabilities of the last real query row."""
        index = self._positions(query.shape[0], query.shape[2], query.device)
        scores, bias = last_row_logits(module, query, key, attention_mask, index, kwargs)
        return row_probs(scores, bias)
