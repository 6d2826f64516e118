"""Last-row attention probabilities without the eager path.

ABFT needs, for every layer and query head, the attention probabilities of the last real prompt
token over all key positions, with gradients into W_Q/W_K. ``output_attentions=True`` would force
eager attention and materialise every layer's T x T matrix; instead we register our own function
in transformers' ``AttentionInterface``:

- the model output is computed by transformers' own ``sdpa_attention_forward`` (unchanged output);
- when a :class:`capture_last_row` is active, the function also computes ``softmax(q_last K^T *
  scaling + mask_row)`` in fp32 for the one query row per sequence, keeps it in the autograd graph and
  records it in layer order;
- when an :class:`edit_last_row` is active, it changes the last row of chosen heads and recomputes
  their output at the last position as ``edited_row @ V`` (inference only: abft ceiling).

Outside a capture and an edit the function is exactly ``sdpa_attention_forward`` plus two attribute lookups.

Modules: rows.py (the row maths as free functions: positions, scores, mask row, softmax, p @ V),
implementation.py (the registered function and its mask function), capture.py, edit.py (both built on rows.py),
switch.py (use_last_row_attention: switch a model and probe it).
"""

from .capture import capture_last_row
from .edit import edit_last_row
from .implementation import ATTN_IMPLEMENTATION, register_last_row_attention
from .rows import last_real_index
from .switch import use_last_row_attention

__all__ = [
    "ATTN_IMPLEMENTATION",
    "capture_last_row",
    "edit_last_row",
    "last_real_index",
    "register_last_row_attention",
    "use_last_row_attention",
]
