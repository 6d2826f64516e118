"""Label scoring: one batched forward per group of prompts, logits only at the last position.

probs = score_prompts(model, prompts, label_token_ids, pad_id)   # (N, C), rows sum to 1
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .. import distributed
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
    """Softmax over the label tokens' logits at each prompt's last position, in prompt order.

    Several processes (abft.distributed) each score their share of the prompts; every one gets all rows.
    """
    device = next(model.parameters()).device
    labels = torch.tensor(list(label_token_ids), device=device)
    mine = distributed.shard(prompts)  # all of them on one process
    out = np.zeros((len(mine), len(labels)), dtype=np.float64)
    batches = list(length_batches(mine, batch_size))
    with progress_bar(description, total=len(mine)) as advance:
        for idx in batches:
            batch = collate([mine[i] for i in idx], pad_id).to(device)
            logits = model(**batch.model_inputs(), logits_to_keep=1).logits[:, -1]  # (B, V)
            probs = torch.softmax(logits[:, labels].double(), dim=-1)
            out[idx] = probs.cpu().numpy()
            advance(len(idx))
    return distributed.gather_rows(out, len(prompts))
