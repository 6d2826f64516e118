"""The registered attention function: transformers' SDPA output, handed to the active capture and edit.

transformers 5.x internals this relies on (checked against 5.23):

- ``masking_utils._preprocess_mask_arguments`` returns **no mask at all** (``None``) for an implementation name
  missing from ``AttentionMaskInterface._global_mapping``. We therefore register ``sdpa_mask`` under our name, so
  the model builds exactly the masks it builds for "sdpa".
- Soft-capping arrives as a ``softcap`` keyword (Gemma2-style); SDPA cannot do it, so we raise.
"""

from __future__ import annotations

import threading

from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import AttentionInterface

from ..errors import UserError

ATTN_IMPLEMENTATION = "abft_last_row"

# This thread's active capture_last_row (.capture) and edit_last_row (.editor), set by their __enter__.
ACTIVE = threading.local()


def _last_row_attention_forward(module, query, key, value, attention_mask, **kwargs):
    """Registered attention function: SDPA output, plus the last row's probabilities when capturing."""
    if kwargs.get("softcap") is not None:
        raise UserError(
            f"{type(module).__name__} uses attention-logit soft-capping, which the "
            f"'{ATTN_IMPLEMENTATION}' attention (built on SDPA) does not support."
        )
    output = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    capture = getattr(ACTIVE, "capture", None)
    if capture is not None:
        capture._record(module, query, key, attention_mask, kwargs)
    editor = getattr(ACTIVE, "editor", None)
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
