"""edit_last_row: change the last row of chosen heads during a forward (inference only; abft ceiling).

The row is computed as capture_last_row computes it (rows.py); a changed head's output at the last position
becomes ``edited_row @ V``.
"""

from __future__ import annotations

import torch

from .implementation import ACTIVE
from .rows import LastPositions, last_row_logits, row_probs, row_values, visible_keys


class edit_last_row:
    """Context manager replacing, during forwards, the last real row of chosen heads' attention.

    ``edit(layer, probs, visible) -> (edited, select)`` gets one layer's (B, H_q, T_kv) fp32 last-row
    probabilities (computed as :class:`capture_last_row` does, on the current, possibly already edited,
    hidden states) and the (B, T_kv) bool keys the row may see (padding, causality, sliding window); it
    returns the edited rows (B, H_q, T_kv) and a (B, H_q) bool of the heads to change. A changed head's
    output at the last position becomes ``edited @ V``; every other position and head keeps its SDPA
    output. Inference only (under ``torch.no_grad()``); ``last_index`` as for capture_last_row.
    """

    def __init__(self, model, edit, last_index: torch.Tensor | None = None):
        self.model = model
        self.edit = edit
        self._positions = LastPositions(last_index)
        self._module_ids: frozenset[int] = frozenset()

    def __enter__(self) -> edit_last_row:
        if torch.is_grad_enabled():
            raise RuntimeError("edit_last_row is for inference: run the forward under torch.no_grad()")
        if getattr(ACTIVE, "editor", None) is not None:
            raise RuntimeError("edit_last_row cannot be nested")
        self._module_ids = frozenset(id(module) for module in self.model.modules())
        ACTIVE.editor = self
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if getattr(ACTIVE, "editor", None) is self:
            ACTIVE.editor = None

    def _apply(self, module, query, key, value, attention_mask, kwargs, output: torch.Tensor) -> torch.Tensor:
        """`output` (B, T, H_q, D) of sdpa_attention_forward with the selected heads' last row edited."""
        if id(module) not in self._module_ids or torch.is_grad_enabled():
            return output
        index = self._positions(query.shape[0], query.shape[2], query.device)
        scores, bias = last_row_logits(module, query, key, attention_mask, index, kwargs)
        probs = row_probs(scores, bias)
        batch, q_heads, _ = probs.shape
        layer = getattr(module, "layer_idx", None)
        edited, select = self.edit(layer if isinstance(layer, int) else None, probs, visible_keys(bias))
        if edited.shape != probs.shape or select.shape != (batch, q_heads):
            raise ValueError(
                f"the edit returned rows {tuple(edited.shape)} and a selection {tuple(select.shape)}; expected "
                f"{tuple(probs.shape)} and {(batch, q_heads)}"
            )
        last = row_values(edited, value).to(output.dtype)  # (B, H_q, D)
        batch_range = torch.arange(batch, device=query.device)
        output = output.clone()
        output[batch_range, index] = torch.where(select[..., None], last, output[batch_range, index])
        return output
