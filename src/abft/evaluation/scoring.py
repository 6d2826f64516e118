"""Label scoring: one batched forward per group of prompts, logits only at the last position.

probs = score_prompts(model, prompts, label_token_ids, pad_id)   # (N, C), rows sum to 1
scorer = Scorer(model, pad_id, batch_size)                       # the same, each distinct prompt once:
probs = scorer.probs(prompts, label_token_ids, "template 3")     # its ScoreCache remembers every row
st = score_states(model, prompts, label_token_ids, pad_id, hidden=True, logit_rows=f)   # + hidden states,
                                                                 # f(full-vocabulary logits) per batch
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import distributed
from ..batching import Batch, collate, length_batches
from ..progress import progress_bar


@torch.no_grad()
def score_prompts(
    model,
    prompts: Sequence,
    label_token_ids: Sequence[int],
    pad_id: int,
    batch_size: int = 16,
    description: str = "scoring",
    around: Callable[[Batch], AbstractContextManager] | None = None,
) -> np.ndarray:
    """Softmax over the label tokens' logits at each prompt's last position, in prompt order.

    `around(batch)`, if given, is a context manager entered around each batch's forward (abft ceiling's
    attention edits, which need the batch's label positions).

    Several processes (abft.distributed) each score their share of the prompts; every one gets all rows.
    With a sharded model a process short of batches scores a dummy one (the first prompt) and drops it.
    """
    labels = torch.tensor(list(label_token_ids), device=next(model.parameters()).device)

    def forward(batch: Batch) -> tuple[np.ndarray]:
        logits = model(**batch.model_inputs(), logits_to_keep=1).logits[:, -1]  # (B, V)
        return (torch.softmax(logits[:, labels].double(), dim=-1).cpu().numpy(),)

    out = _batched_rows(model, prompts, pad_id, batch_size, description, forward, around)
    return out[0] if out else np.zeros((0, len(labels)), dtype=np.float64)


@dataclass(frozen=True)
class States:
    """score_states' rows, in prompt order."""

    probs: np.ndarray  # (N, C) float64, as score_prompts
    hidden: np.ndarray | None  # (N, D) float32: the last layer's hidden state at the last position
    logit_rows: np.ndarray | None  # (N, W): logit_rows(full-vocabulary last-position logits) of each batch


@torch.no_grad()
def score_states(
    model,
    prompts: Sequence,
    label_token_ids: Sequence[int],
    pad_id: int,
    batch_size: int = 16,
    description: str = "scoring",
    *,
    hidden: bool = True,
    logit_rows: Callable[[np.ndarray], np.ndarray] | None = None,
) -> States:
    """score_prompts' label distributions plus, from the same forward, the last-layer hidden state at the last
    position (`output_hidden_states`, ``hidden_states[-1][:, -1]``; prompts are left-padded) and
    `logit_rows(z)` of each batch's (B, V) float32 full-vocabulary logits z (identity: the logits themselves;
    a reduction to a few columns keeps memory at one batch's logits, e.g. kNN votes). Not for empty `prompts`.
    """
    labels = torch.tensor(list(label_token_ids), device=next(model.parameters()).device)

    def forward(batch: Batch) -> tuple:
        out = model(**batch.model_inputs(), logits_to_keep=1, output_hidden_states=hidden)
        z = out.logits[:, -1]  # (B, V)
        rows = [torch.softmax(z[:, labels].double(), dim=-1).cpu().numpy()]
        if hidden:
            rows.append(out.hidden_states[-1][:, -1].float().cpu().numpy())
        if logit_rows is not None:
            rows.append(np.asarray(logit_rows(z.float().cpu().numpy())))
        return tuple(rows)

    if not prompts:
        raise ValueError("score_states needs at least one prompt")
    rows = list(_batched_rows(model, prompts, pad_id, batch_size, description, forward))
    return States(rows.pop(0), rows.pop(0) if hidden else None, rows.pop(0) if logit_rows is not None else None)


def _batched_rows(model, prompts, pad_id, batch_size, description, forward, around=None) -> list[np.ndarray]:
    """forward(batch) -> a tuple of (B, ...) arrays, over length batches of this process's share of `prompts`;
    each array's rows reassembled over all processes in prompt order. [] when no process has a prompt."""
    device = next(model.parameters()).device
    mine = distributed.shard(prompts)  # all of them on one process
    outs: list[np.ndarray] | None = None
    batches = list(length_batches(mine, batch_size))
    batches += [None] * (distributed.batch_count(len(prompts), batch_size) - len(batches))
    with progress_bar(description, total=len(mine)) as advance:
        for idx in batches:
            batch = collate([mine[i] for i in idx] if idx else list(prompts[:1]), pad_id).to(device)
            with around(batch) if around is not None else nullcontext():
                rows = forward(batch)
            if outs is None:  # shapes from the first batch (a dummy one too, so every process has them)
                outs = [np.zeros((len(mine), *r.shape[1:]), dtype=r.dtype) for r in rows]
            if idx:
                for out, r in zip(outs, rows, strict=True):
                    out[idx] = r
                advance(len(idx))
    return [distributed.gather_rows(out, len(prompts)) for out in outs or []]


class ScoreCache:
    """Label distributions already computed in one stage, keyed by (prompt token ids, label token ids).

    Only valid while the model does not change: make one per stage (before / after training).
    """

    def __init__(self) -> None:
        self._rows: dict[tuple[bytes, tuple[int, ...]], np.ndarray] = {}

    @staticmethod
    def key(prompt, label_token_ids: Sequence[int]) -> tuple[bytes, tuple[int, ...]]:
        return np.asarray(prompt.input_ids, dtype=np.int64).tobytes(), tuple(int(i) for i in label_token_ids)

    def add(self, prompts: Sequence, label_token_ids: Sequence[int], probs: np.ndarray) -> None:
        for prompt, row in zip(prompts, probs, strict=True):
            self._rows[self.key(prompt, label_token_ids)] = np.asarray(row, dtype=np.float64)

    def __contains__(self, key) -> bool:
        return key in self._rows

    def __getitem__(self, key) -> np.ndarray:
        return self._rows[key]


@dataclass
class Scorer:
    """score_prompts for one model and stage, through a ScoreCache: each distinct prompt is scored once."""

    model: object
    pad_id: int
    batch_size: int = 16
    cache: ScoreCache = field(default_factory=ScoreCache)

    @classmethod
    def create(cls, model, tokenizer, cfg, cache: ScoreCache | None = None) -> Scorer:
        """A scorer with the tokenizer's pad id, --eval-batch-size and `cache` (a new one if None)."""
        return cls(model, tokenizer.pad_token_id, cfg.eval.eval_batch_size, ScoreCache() if cache is None else cache)

    def probs(self, prompts: Sequence, label_token_ids: Sequence[int], description: str = "scoring") -> np.ndarray:
        """(N, C) label distributions of `prompts`, scoring only those not yet in the cache (each once)."""
        keys = [ScoreCache.key(p, label_token_ids) for p in prompts]
        todo: dict = {}
        for i, key in enumerate(keys):
            if key not in self.cache:
                todo.setdefault(key, i)
        if todo:
            new = [prompts[i] for i in todo.values()]
            probs = score_prompts(self.model, new, label_token_ids, self.pad_id, self.batch_size, description)
            self.cache.add(new, label_token_ids, probs)
        return np.stack([self.cache[key] for key in keys]) if keys else np.zeros((0, len(label_token_ids)))

    def states(self, prompts: Sequence, label_token_ids: Sequence[int], description: str = "scoring", **what) -> States:
        """score_states of `prompts` (`what`: hidden, logit_rows), every one scored; their label distributions
        join the cache."""
        out = score_states(self.model, prompts, label_token_ids, self.pad_id, self.batch_size, description, **what)
        self.cache.add(prompts, label_token_ids, out.probs)
        return out
