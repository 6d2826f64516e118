"""Last-row attention probabilities without the eager path.

ABFT needs, for every layer and query head, the attention probabilities of the last real prompt
token over all key positions, with gradients into W_Q/W_K. ``output_attentions=True`` would force
eager attention and materialise every layer's T x T matrix; instead we register our own function
in transformers' ``AttentionInterface``:

- the model output is computed by transformers' own ``sdpa_attention_forward`` (unchanged output);
- when a :class:`capture_last_row` is active, the function also computes ``softmax(q_last K^T *
  scaling + mask_row)`` in fp32 for the one query row per sequence, keeps it in the autograd graph and
  records it in layer order.

Outside a capture the function is exactly ``sdpa_attention_forward`` plus one attribute lookup.

transformers 5.x internals this relies on (checked against 5.23):

- ``masking_utils._preprocess_mask_arguments`` returns **no mask at all** (``None``) for an
  implementation name missing from ``AttentionMaskInterface._global_mapping``. We therefore register
  ``sdpa_mask`` under our name, so the model builds exactly the masks it builds for "sdpa"
  (padding, causal, sliding-window and chunked patterns, boolean, shape (B, 1, T_q, T_kv)).
- ``sdpa_mask`` may return ``None`` (the ``is_causal`` skip) when there is no padding and either
  ``T_q == 1`` or ``T_q == T_kv`` (or an empty cache), and, for sliding layers, only when
  ``T_kv < sliding_window`` (so the window cannot matter). ``sdpa_attention_forward`` then uses
  ``is_causal = T_q > 1 and module.is_causal`` (upper-left alignment). We rebuild the same row:
  keys ``<= last_index`` (plus the window, a no-op in that case); with ``T_q == 1`` every key.
- The scaling comes from the ``scaling`` keyword that every attention module passes (Llama/Qwen2:
  ``head_dim**-0.5``; Gemma3: ``query_pre_attn_scalar**-0.5``; GPT-2: ``head_dim**-0.5``, further
  divided by ``layer_idx + 1`` when ``scale_attn_by_inverse_layer_idx``); ``None`` means SDPA's default
  ``head_dim**-0.5``.
- Soft-capping arrives as a ``softcap`` keyword (Gemma2-style); SDPA cannot do it, so we raise.
- Sliding windows live in the mask transformers builds per layer type (Gemma3/Qwen2/Mistral:
  ``kv_idx > q_idx - sliding_window``); modules also pass ``sliding_window`` which we use only for
  the ``None``-mask case.

Gradient checkpointing: non-reentrant checkpointing (transformers' default,
``use_reentrant=False``) is supported. The extra row computation runs under identity
``saved_tensors_hooks`` so it saves its few tensors normally instead of through the checkpoint's
hooks; the recomputation in backward therefore does not need to reproduce it and the rows are
recorded once (calls made while the autograd engine runs a backward are never recorded).
Reentrant checkpointing runs the forward under ``no_grad`` (the rows would carry no gradient),
so :class:`capture_last_row` raises a :class:`UserError` for it.

:class:`edit_last_row` uses the same row computation to *change* the last row of chosen heads during a
forward (inference only): the head's output at the last position becomes ``edited_row @ V`` (abft ceiling).

Attention dropout (training mode, e.g. GPT-2's ``attn_pdrop``) is applied by SDPA to the output
only; the captured rows are the pre-dropout probabilities.
"""

from __future__ import annotations

import functools
import threading
import weakref

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import AttentionInterface

from . import distributed
from .errors import UserError

__all__ = [
    "ATTN_IMPLEMENTATION",
    "capture_last_row",
    "edit_last_row",
    "last_real_index",
    "register_last_row_attention",
    "use_last_row_attention",
]

ATTN_IMPLEMENTATION = "abft_last_row"

_STATE = threading.local()
_VERIFIED: weakref.WeakSet = weakref.WeakSet()


def _identity(tensor):
    return tensor


def _additive(allowed: torch.Tensor) -> torch.Tensor:
    """Boolean "may attend" -> fp32 additive bias (0 / float32 min, as transformers' eager masks)."""
    bias = torch.zeros(allowed.shape, dtype=torch.float32, device=allowed.device)
    return bias.masked_fill(~allowed, torch.finfo(torch.float32).min)


def _in_backward() -> bool:
    """True while the autograd engine runs a backward pass (e.g. checkpoint recomputation)."""
    return torch._C._current_graph_task_id() != -1


def _last_row_attention_forward(module, query, key, value, attention_mask, **kwargs):
    """Registered attention function: SDPA output, plus the last row's probabilities when capturing."""
    if kwargs.get("softcap") is not None:
        raise UserError(
            f"{type(module).__name__} uses attention-logit soft-capping, which the "
            f"'{ATTN_IMPLEMENTATION}' attention (built on SDPA) does not support."
        )
    output = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    capture = getattr(_STATE, "capture", None)
    if capture is not None:
        capture._record(module, query, key, attention_mask, kwargs)
    editor = getattr(_STATE, "editor", None)
    if editor is not None:
        output = (editor._apply(module, query, key, value, attention_mask, kwargs, output[0]), *output[1:])
    return output


def register_last_row_attention() -> None:
    """Register the attention function and its mask function with transformers (idempotent)."""
    if AttentionInterface._global_mapping.get(ATTN_IMPLEMENTATION) is not _last_row_attention_forward:
        AttentionInterface.register(ATTN_IMPLEMENTATION, _last_row_attention_forward)
    if AttentionMaskInterface._global_mapping.get(ATTN_IMPLEMENTATION) is not sdpa_mask:
        # Without this, masking_utils builds no mask at all for an unknown implementation name.
        AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)


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


def last_real_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of the last real (mask == 1) token of each row of a (B, T) attention mask."""
    mask = attention_mask.to(torch.bool)
    if mask.dim() != 2:
        raise ValueError(f"expected a (B, T) attention mask, got shape {tuple(attention_mask.shape)}")
    length = mask.shape[1]
    return (length - 1 - mask.flip(-1).to(torch.int8).argmax(-1)).to(torch.long)


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
        if last_index is not None:
            if not isinstance(last_index, torch.Tensor) or last_index.dim() != 1:
                raise ValueError("last_index must be a 1-D tensor (B,) of token positions")
            if last_index.dtype.is_floating_point or last_index.dtype == torch.bool:
                raise ValueError(f"last_index must be an integer tensor, got {last_index.dtype}")
            last_index = last_index.to(torch.long)
        self.model = model
        self.last_index = last_index
        self._entries: list[tuple[int | None, int, torch.Tensor]] = []
        self._seen: set[int] = set()
        self._module_ids: frozenset[int] = frozenset()
        self._probs: torch.Tensor | None = None
        self._index_cache: dict[tuple[torch.device, int], torch.Tensor] = {}

    # -- context manager -------------------------------------------------------------------------
    def __enter__(self) -> capture_last_row:
        if getattr(_STATE, "capture", None) is not None:
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
        self._index_cache = {}
        self._module_ids = frozenset(id(module) for module in self.model.modules())
        self._fsdp_units = _fsdp_units(self.model) if distributed.sharded() else {}  # no walk on the hot path
        _STATE.capture = self
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if getattr(_STATE, "capture", None) is self:
            _STATE.capture = None

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

    def _positions(self, batch: int, q_length: int, device: torch.device) -> torch.Tensor:
        cached = self._index_cache.get((device, q_length))
        if cached is not None and cached.shape[0] == batch:
            return cached
        if self.last_index is None:
            index = torch.full((batch,), q_length - 1, dtype=torch.long, device=device)
        else:
            index = self.last_index.to(device)
            if index.shape[0] != batch:
                raise ValueError(f"last_index has {index.shape[0]} entries for a batch of {batch}")
            if bool((index < 0).any()) or bool((index >= q_length).any()):
                raise ValueError(f"last_index values must lie in [0, {q_length - 1}]")
        self._index_cache[(device, q_length)] = index
        return index

    def _compute(self, module, query, key, attention_mask, kwargs) -> torch.Tensor:
        """(B, H_q, T_kv) fp32 probabilities of the last real query row."""
        scores, bias = self._logits(module, query, key, attention_mask, kwargs)
        return torch.softmax(scores + bias, dim=-1)

    def _logits(self, module, query, key, attention_mask, kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """The last row's scaled scores (B, H_q, T_kv) and its additive mask bias (B, 1 or H_q, T_kv)."""
        batch, q_heads, q_length, head_dim = query.shape
        kv_heads, kv_length = key.shape[1], key.shape[2]
        if q_heads % kv_heads:
            raise RuntimeError(f"{q_heads} query heads are not a multiple of {kv_heads} key/value heads")
        device = query.device
        index = self._positions(batch, q_length, device)
        batch_range = torch.arange(batch, device=device)

        scaling = kwargs.get("scaling")
        if scaling is None:
            scaling = head_dim**-0.5

        # (B, Hq, D) -> (B, Hkv, n_rep, D): query head h uses key head h // n_rep, as repeat_kv does.
        q_last = query[batch_range, :, index, :].float()
        q_last = q_last.reshape(batch, kv_heads, q_heads // kv_heads, head_dim)
        keys = key.float()
        if keys.shape[0] != batch:
            keys = keys.expand(batch, -1, -1, -1)
        scores = torch.matmul(q_last, keys.transpose(-1, -2)).reshape(batch, q_heads, kv_length) * scaling
        return scores, self._mask_row(module, attention_mask, index, batch_range, q_length, kv_length, kwargs)

    @staticmethod
    def _mask_row(module, attention_mask, index, batch_range, q_length, kv_length, kwargs) -> torch.Tensor:
        """Additive fp32 bias (B, 1 or Hq, T_kv) for the last query row, as SDPA/eager would apply it."""
        if attention_mask is not None:
            mask = attention_mask
            if mask.dim() != 4:
                raise RuntimeError(f"expected a 4-D attention mask, got shape {tuple(mask.shape)}")
            if mask.shape[0] != batch_range.shape[0]:
                mask = mask.expand(batch_range.shape[0], -1, -1, -1)
            row = mask[batch_range, :, index, :] if mask.shape[2] != 1 else mask[:, :, 0, :]
            if row.dtype == torch.bool:
                return _additive(row)
            return row.float()
        # No mask: SDPA relied on is_causal (upper-left aligned) or attended to everything.
        is_causal = kwargs.get("is_causal")
        if is_causal is None:
            is_causal = getattr(module, "is_causal", True)
        kv_positions = torch.arange(kv_length, device=index.device)[None, :]
        allowed = torch.ones((index.shape[0], kv_length), dtype=torch.bool, device=index.device)
        if is_causal and q_length > 1:
            allowed = allowed & (kv_positions <= index[:, None])
            window = kwargs.get("sliding_window")
            if window is not None:
                allowed = allowed & (kv_positions > index[:, None] - window)
        return _additive(allowed)[:, None, :]


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
        self._rows = capture_last_row(model, last_index)  # its row computation, not its recording
        self._module_ids: frozenset[int] = frozenset()

    def __enter__(self) -> edit_last_row:
        if torch.is_grad_enabled():
            raise RuntimeError("edit_last_row is for inference: run the forward under torch.no_grad()")
        if getattr(_STATE, "editor", None) is not None:
            raise RuntimeError("edit_last_row cannot be nested")
        self._module_ids = frozenset(id(module) for module in self.model.modules())
        _STATE.editor = self
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if getattr(_STATE, "editor", None) is self:
            _STATE.editor = None

    def _apply(self, module, query, key, value, attention_mask, kwargs, output: torch.Tensor) -> torch.Tensor:
        """`output` (B, T, H_q, D) of sdpa_attention_forward with the selected heads' last row edited."""
        if id(module) not in self._module_ids or torch.is_grad_enabled():
            return output
        scores, bias = self._rows._logits(module, query, key, attention_mask, kwargs)
        probs = torch.softmax(scores + bias, dim=-1)
        batch, q_heads, kv_length = probs.shape
        index = self._rows._positions(batch, query.shape[2], query.device)
        batch_range = torch.arange(batch, device=query.device)
        visible = (bias > torch.finfo(torch.float32).min / 2).any(1)  # (B, T_kv)
        layer = getattr(module, "layer_idx", None)
        edited, select = self.edit(layer if isinstance(layer, int) else None, probs, visible)
        if edited.shape != probs.shape or select.shape != (batch, q_heads):
            raise ValueError(
                f"the edit returned rows {tuple(edited.shape)} and a selection {tuple(select.shape)}; expected "
                f"{tuple(probs.shape)} and {(batch, q_heads)}"
            )
        values = value.float()
        if values.shape[0] != batch:
            values = values.expand(batch, -1, -1, -1)
        kv_heads = values.shape[1]  # query head h reads key/value head h // n_rep, as repeat_kv
        grouped = edited.reshape(batch, kv_heads, q_heads // kv_heads, kv_length)
        last = torch.matmul(grouped, values).reshape(batch, q_heads, -1).to(output.dtype)  # (B, H_q, D)
        output = output.clone()
        output[batch_range, index] = torch.where(select[..., None], last, output[batch_range, index])
        return output
