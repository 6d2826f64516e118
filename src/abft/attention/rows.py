"""The last query row's attention, as free functions on the tensors the attention function receives.

``query`` is (B, H_q, T_q, D), ``key`` and ``value`` (B or 1, H_kv, T_kv, D); query head h reads key/value head
h // (H_q / H_kv), as transformers' ``repeat_kv`` does. Everything is fp32: q_last and K are upcast before q.K,
the mask is an fp32 additive bias, the softmax runs in fp32.

transformers 5.x internals the mask row relies on (checked against 5.23):

- The mask is the one transformers builds for "sdpa" (``sdpa_mask``: padding, causal, sliding-window and chunked
  patterns, boolean, shape (B, 1, T_q, T_kv)); see implementation.py for why it is the same.
- ``sdpa_mask`` may return ``None`` (the ``is_causal`` skip) when there is no padding and either ``T_q == 1`` or
  ``T_q == T_kv`` (or an empty cache), and, for sliding layers, only when ``T_kv < sliding_window`` (so the
  window cannot matter). ``sdpa_attention_forward`` then uses ``is_causal = T_q > 1 and module.is_causal``
  (upper-left alignment). :func:`mask_row` rebuilds the same row: keys ``<= last_index`` (plus the window, a
  no-op in that case); with ``T_q == 1`` every key.
- The scaling comes from the ``scaling`` keyword that every attention module passes (Llama/Qwen2:
  ``head_dim**-0.5``; Gemma3: ``query_pre_attn_scalar**-0.5``; GPT-2: ``head_dim**-0.5``, further divided by
  ``layer_idx + 1`` when ``scale_attn_by_inverse_layer_idx``); ``None`` means SDPA's default ``head_dim**-0.5``.
- Sliding windows live in the mask transformers builds per layer type (Gemma3/Qwen2/Mistral:
  ``kv_idx > q_idx - sliding_window``); modules also pass ``sliding_window`` which we use only for the
  ``None``-mask case.
"""

from __future__ import annotations

import torch

_MIN = torch.finfo(torch.float32).min


def last_real_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of the last real (mask == 1) token of each row of a (B, T) attention mask."""
    mask = attention_mask.to(torch.bool)
    if mask.dim() != 2:
        raise ValueError(f"expected a (B, T) attention mask, got shape {tuple(attention_mask.shape)}")
    length = mask.shape[1]
    return (length - 1 - mask.flip(-1).to(torch.int8).argmax(-1)).to(torch.long)


def checked_last_index(last_index: torch.Tensor | None) -> torch.Tensor | None:
    """A caller's ``last_index`` (B,) as a long tensor, or ``None`` (the last position of every row)."""
    if last_index is None:
        return None
    if not isinstance(last_index, torch.Tensor) or last_index.dim() != 1:
        raise ValueError("last_index must be a 1-D tensor (B,) of token positions")
    if last_index.dtype.is_floating_point or last_index.dtype == torch.bool:
        raise ValueError(f"last_index must be an integer tensor, got {last_index.dtype}")
    return last_index.to(torch.long)


def last_positions(last_index: torch.Tensor | None, batch: int, q_length: int, device: torch.device) -> torch.Tensor:
    """(B,) query position of each row's last real token: ``last_index`` on ``device`` (checked against the
    batch), or T_q - 1 for every row when it is ``None`` (left padding or none)."""
    if last_index is None:
        return torch.full((batch,), q_length - 1, dtype=torch.long, device=device)
    index = last_index.to(device)
    if index.shape[0] != batch:
        raise ValueError(f"last_index has {index.shape[0]} entries for a batch of {batch}")
    if bool((index < 0).any()) or bool((index >= q_length).any()):
        raise ValueError(f"last_index values must lie in [0, {q_length - 1}]")
    return index


class LastPositions:
    """:func:`last_positions` memoised per (device, T_q): its checks wait for the device, so they run on the
    first layer of a forward instead of on every layer."""

    def __init__(self, last_index: torch.Tensor | None):
        self.last_index = checked_last_index(last_index)
        self._cache: dict[tuple[torch.device, int], torch.Tensor] = {}

    def clear(self) -> None:
        self._cache = {}

    def __call__(self, batch: int, q_length: int, device: torch.device) -> torch.Tensor:
        cached = self._cache.get((device, q_length))
        if cached is not None and cached.shape[0] == batch:
            return cached
        index = last_positions(self.last_index, batch, q_length, device)
        self._cache[(device, q_length)] = index
        return index


def additive(allowed: torch.Tensor) -> torch.Tensor:
    """Boolean "may attend" -> fp32 additive bias (0 / float32 min, as transformers' eager masks)."""
    bias = torch.zeros(allowed.shape, dtype=torch.float32, device=allowed.device)
    return bias.masked_fill(~allowed, _MIN)


def mask_row(module, attention_mask, index, batch_range, q_length: int, kv_length: int, kwargs) -> torch.Tensor:
    """Additive fp32 bias (B, 1 or H_q, T_kv) of the query rows ``index`` (B,), as SDPA/eager would apply it.

    ``attention_mask`` is the layer's 4-D mask or ``None``; ``batch_range`` is ``arange(B)``; ``kwargs`` the
    attention function's keywords (``is_causal``, ``sliding_window``: used only without a mask)."""
    if attention_mask is not None:
        mask = attention_mask
        if mask.dim() != 4:
            raise RuntimeError(f"expected a 4-D attention mask, got shape {tuple(mask.shape)}")
        if mask.shape[0] != batch_range.shape[0]:
            mask = mask.expand(batch_range.shape[0], -1, -1, -1)
        row = mask[batch_range, :, index, :] if mask.shape[2] != 1 else mask[:, :, 0, :]
        if row.dtype == torch.bool:
            return additive(row)
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
    return additive(allowed)[:, None, :]


def last_row_logits(module, query, key, attention_mask, index, kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """The scaled scores (B, H_q, T_kv) of the query rows ``index`` (B,) and their additive mask bias
    (B, 1 or H_q, T_kv): the row's logits are ``scores + bias``."""
    batch, q_heads, q_length, head_dim = query.shape
    kv_heads, kv_length = key.shape[1], key.shape[2]
    if q_heads % kv_heads:
        raise RuntimeError(f"{q_heads} query heads are not a multiple of {kv_heads} key/value heads")
    batch_range = torch.arange(batch, device=query.device)

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
    return scores, mask_row(module, attention_mask, index, batch_range, q_length, kv_length, kwargs)


def row_probs(scores: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """(B, H_q, T_kv) fp32 probabilities of the row: ``softmax(scores + bias)``."""
    return torch.softmax(scores + bias, dim=-1)


def visible_keys(bias: torch.Tensor) -> torch.Tensor:
    """(B, T_kv) bool: the keys the row may see under its bias (padding, causality, sliding window)."""
    return (bias > _MIN / 2).any(1)


def row_values(probs: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """(B, H_q, D) fp32 output of the rows ``probs`` (B, H_q, T_kv): ``probs @ V`` with V's head mapping."""
    batch, q_heads, kv_length = probs.shape
    values = value.float()
    if values.shape[0] != batch:
        values = values.expand(batch, -1, -1, -1)
    kv_heads = values.shape[1]  # query head h reads key/value head h // n_rep, as repeat_kv
    grouped = probs.reshape(batch, kv_heads, q_heads // kv_heads, kv_length)
    return torch.matmul(grouped, values).reshape(batch, q_heads, -1)
