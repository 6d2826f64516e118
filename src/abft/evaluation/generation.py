"""Continuations of text prefixes, and fixed-size text features, from a causal LM.

    texts = generate_continuations(model, tokenizer, ["The film was"], max_new_tokens=32, decoding="sample", seed=0)
    feats = text_features(model, tokenizer, ["The film was great"], pooling="last")     # (N, hidden) float32

Generation: batches of left-padded prefixes (in the given order) through `model.generate`; "greedy" is
argmax decoding, "sample" is nucleus sampling (top-p TOP_P, temperature 1, no top-k) from a torch RNG
seeded per batch from `seed` and the batch's number inside `torch.random.fork_rng`, so the caller's random
state (training's) is untouched and the same (prefixes, limits, seed, batch size) always gives the same
texts, on one process or several (under torchrun / accelerate launch each process generates every
world_size-th batch and features every world_size-th text; all get all results). A continuation stops at EOS,
after `max_new_tokens` (or its own entry of `limits`), and is cut before its first newline: reference
continuations are single lines of text. Prefixes are batched by descending limit (ties in input order) so a
batch wastes few steps; results come back in input order.

Both functions take texts, or their token ids (lists of ints) when the caller has tokenised them already.

Features: the final hidden state (after the last norm, `model.base_model`) of each text, at its last token
("last", what MAUVE's own GPT-2 featuriser uses) or averaged over its tokens ("mean").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from abft import distributed
from abft.batching import left_pad

DECODINGS = ("sample", "greedy")
POOLINGS = ("last", "mean")
TOP_P = 0.95


def _encode(tokenizer, texts: Sequence[str | Sequence[int]]) -> list[list[int]]:
    """Token ids of each text; an entry that is token ids already is taken as it is."""
    return [list(tokenizer(t)["input_ids"] if isinstance(t, str) else t) for t in texts]


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _continuation(tokenizer, prefix_ids: list[int], new_ids: list[int]) -> str:
    """The decoded text of `new_ids` after the prefix (decoded together, so a leading space survives)."""
    head = tokenizer.decode(prefix_ids, skip_special_tokens=True)
    full = tokenizer.decode(prefix_ids + new_ids, skip_special_tokens=True)
    return full[len(head) :] if full.startswith(head) else tokenizer.decode(new_ids, skip_special_tokens=True)


@torch.no_grad()
def generate_continuations(
    model,
    tokenizer,
    prefixes: Sequence[str | Sequence[int]],
    max_new_tokens: int = 32,
    decoding: str = "sample",
    seed: int = 0,
    batch_size: int = 16,
    limits: Sequence[int] | None = None,
) -> tuple[list[str], list[int]]:
    """(continuation texts, generated token counts) of `prefixes`, in order; see the module docstring.

    `limits`: new tokens at most per prefix (default: `max_new_tokens` for all).
    """
    if decoding not in DECODINGS:
        raise ValueError(f"decoding must be one of {DECODINGS}, got {decoding!r}")
    device = _device(model)
    pad = tokenizer.pad_token_id
    eos = tokenizer.eos_token_id
    encoded = _encode(tokenizer, prefixes)
    limits = [max_new_tokens] * len(prefixes) if limits is None else [int(n) for n in limits]
    options: dict = {"pad_token_id": pad, "eos_token_id": eos}
    if decoding == "sample":
        options.update(do_sample=True, top_p=TOP_P, top_k=0, temperature=1.0)
    else:
        options.update(do_sample=False)
    order = sorted(range(len(prefixes)), key=lambda i: (-limits[i], i))
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    devices = [device] if device.type == "cuda" else []
    done: dict[int, tuple[str, int]] = {}  # prefix index -> (continuation, new tokens)
    with torch.random.fork_rng(devices=devices):
        for number in distributed.shard(range(len(batches))):
            batch = batches[number]
            steps = max(limits[i] for i in batch)
            if steps < 1:
                done.update((i, ("", 0)) for i in batch)
                continue
            torch.manual_seed(seed * 100_003 + number)  # a batch's texts do not depend on who generates it
            ids, mask, _ = (t.to(device) for t in left_pad([encoded[i] for i in batch], pad))
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=steps, **options)
            for i, generated in zip(batch, out[:, ids.shape[1] :].tolist(), strict=True):
                generated = generated[: limits[i]]
                if eos is not None and eos in generated:
                    generated = generated[: generated.index(eos)]
                generated = [t for t in generated if t != pad]  # rows finished early are padded
                done[i] = (_continuation(tokenizer, encoded[i], generated).split("\n", 1)[0].rstrip(), len(generated))
    done = distributed.merge_dicts(done)
    texts = [done[i][0] for i in range(len(prefixes))]
    counts = [done[i][1] for i in range(len(prefixes))]
    return texts, counts


@torch.no_grad()
def text_features(
    model, tokenizer, texts: Sequence[str | Sequence[int]], pooling: str = "last", batch_size: int = 16
) -> np.ndarray:
    """(N, hidden) float32: the final hidden state of each text at its last token or averaged (see above)."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    device = _device(model)
    encoded = distributed.shard([ids or [tokenizer.eos_token_id] for ids in _encode(tokenizer, texts)])
    decoder = model.base_model
    out = []
    for start in range(0, len(encoded), batch_size):
        padded = left_pad(encoded[start : start + batch_size], tokenizer.pad_token_id)
        ids, mask, positions = (t.to(device) for t in padded)
        hidden = decoder(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state  # (B, T, H)
        hidden = hidden.float()
        if pooling == "last":
            pooled = hidden[:, -1]  # left padding: every text ends at T-1
        else:
            weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * weights).sum(1) / weights.sum(1)
        out.append(pooled.cpu().numpy())
    width = model.config.get_text_config().hidden_size
    local = np.concatenate(out, axis=0) if out else np.zeros((0, width), dtype=np.float32)
    return distributed.gather_rows(local, len(texts))
