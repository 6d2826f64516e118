"""Label scoring: one batched forward per group of prompts, logits only at the last position.

probs = score_prompts(model, prompts, label_token_ids, pad_id)   # (N, C), rows sum to 1
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..batching import collate, length_batches
from ..progress import progress_bar


@torch.no_grad()
def score_prompts(
    model,
    prompts: Sequence,
    label_token_ids: Sequence[int],
    pad_id: int,
    batch_size: int = 16,
    description: str = "scoring",
) -> np.ndarray:
    """Softmax over the label tokens' logits at each prompt's last position, in prompt order."""
    device = next(model.parameters()).device
    labels = torch.tensor(list(label_token_ids), device=device)
    out = np.zeros((len(prompts), len(labels)), dtype=np.float64)
    batches = list(length_batches(prompts, batch_size))
    with progress_bar(description, total=len(prompts)) as advance:
        for idx in batches:
            batch = collate([prompts[i] for i in idx], pad_id).to(device)
            logits = model(**batch.model_inputs(), logits_to_keep=1).logits[:, -1]  # (B, V)
            probs = torch.softmax(logits[:, labels].double(), dim=-1)
            out[idx] = probs.cpu().numpy()
            advance(len(idx))
    return out
