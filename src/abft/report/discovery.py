"""Head discovery without training: which heads attend to the demonstrations' labels, and which are classic
induction heads.

    result = discover_heads(model, prompts, pad_id, num_classes, prefix=[bos])     # heads.json content

Three views, each per (layer, head):
- ABFT's filter (the one training uses, ABFTObjective.induction_heads via heads.head_statistics): label
  mass S > k / (k + log n_t); reported as the fraction of prompts passing, and heads passing on >= min_rate.
- The looser threshold of the authors' earlier circuit work (Cho et al., ICLR 2025, "Revisiting In-context
  Learning Inference Circuit"): magnitude S > c / n_t, and correctness (mass on gold-label tokens minus
  mass on the other label tokens) > c / (n_t * C), with c = 5 and C the number of labels.
- Prefix matching on repeated random tokens [prefix] R R (R: `length` distinct non-special tokens): the mean
  attention from each token of the second copy to the token after that token's first occurrence, with full
  attention matrices (eager attention, output_attentions) on short sequences.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..heads import head_statistics, heads_summary
from ..objectives import ABFTObjective

CIRCUIT_FACTOR = 5.0


def circuit_heads(
    label_probs: torch.Tensor,
    valid: torch.Tensor,
    correct: torch.Tensor,
    n_tokens: torch.Tensor,
    num_classes: int,
    factor: float = CIRCUIT_FACTOR,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, L, H, k) label attention -> magnitude pass, correctness pass (bool) and correctness (float)."""
    wrong = valid & ~correct
    magnitude = (label_probs * valid[:, None, None, :]).sum(-1)
    correctness = (label_probs * correct[:, None, None, :]).sum(-1) - (label_probs * wrong[:, None, None, :]).sum(-1)
    threshold = (factor / n_tokens.double()).float()[:, None, None]  # (B, 1, 1)
    return magnitude > threshold, correctness > threshold / num_classes, correctness


def label_head_scores(
    model,
    prompts: Sequence,
    pad_id: int,
    num_classes: int,
    objective: ABFTObjective | None = None,
    factor: float = CIRCUIT_FACTOR,
    batch_size: int = 8,
) -> dict[str, np.ndarray]:
    """head_statistics (ABFT's filter) plus the circuit-threshold rates and mean correctness, each (L, H)."""

    def extra(batch, label_probs):
        valid = batch.demo_labels >= 0
        correct = valid & (batch.demo_labels == batch.gold[:, None])
        magnitude, correct_pass, correctness = circuit_heads(
            label_probs, valid, correct, batch.lengths, num_classes, factor
        )
        return {
            "circuit_rate": magnitude.float(),
            "circuit_correct_rate": correct_pass.float(),
            "correctness": correctness,
        }

    return head_statistics(model, prompts, pad_id, objective, batch_size, extra=extra)


def induction_stripe(attentions: torch.Tensor, prefix: int, length: int) -> torch.Tensor:
    """(B, L, H, T, T) attention of [prefix] R R -> (L, H) mean attention from R2[j] to R1[j+1].

    The token after R[length-1]'s first occurrence is the first token of the second copy.
    """
    j = torch.arange(length, device=attentions.device)
    dest = prefix + length + j
    src = prefix + 1 + j
    return attentions[..., dest, src].mean(dim=(0, -1))


@torch.no_grad()
def prefix_matching_scores(
    model,
    length: int = 32,
    sequences: int = 8,
    seed: int = 0,
    prefix: Sequence[int] = (),
    exclude: Sequence[int] = (),
    vocab_size: int | None = None,
) -> np.ndarray:
    """(L, H) induction (prefix-matching) score of every head on `sequences` repeated random sequences.

    Tokens are drawn without repetition from ids < vocab_size (default: the model's) minus `exclude`.
    """
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    skip = set(exclude) | set(prefix)
    candidates = torch.tensor([i for i in range(vocab_size or config.vocab_size) if i not in skip])
    if len(candidates) < length:
        raise ValueError(f"the vocabulary has {len(candidates)} usable tokens, fewer than length={length}")
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(sequences):
        r = candidates[torch.randperm(len(candidates), generator=generator)[:length]]
        rows.append(torch.cat([torch.tensor(list(prefix), dtype=torch.long), r, r]))
    device = next(model.parameters()).device
    ids = torch.stack(rows).to(device)
    decoder = getattr(model, model.base_model_prefix, model)
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        out = decoder(input_ids=ids, attention_mask=torch.ones_like(ids), output_attentions=True, use_cache=False)
    finally:
        model.set_attn_implementation(previous)
    attentions = torch.stack([a.float() for a in out.attentions], dim=1)  # (B, L, H, T, T)
    return induction_stripe(attentions, len(prefix), length).double().cpu().numpy()


def _layers(mask: np.ndarray) -> dict[str, list[int]]:
    out = {str(layer): [int(h) for h in np.nonzero(mask[layer])[0]] for layer in range(mask.shape[0])}
    return {k: v for k, v in out.items() if v}


def discover_heads(
    model,
    prompts: Sequence,
    pad_id: int,
    num_classes: int,
    objective: ABFTObjective | None = None,
    *,
    min_rate: float = 0.5,
    circuit_factor: float = CIRCUIT_FACTOR,
    induction_length: int = 32,
    induction_sequences: int = 8,
    induction_threshold: float = 0.4,
    seed: int = 0,
    prefix: Sequence[int] = (),
    exclude: Sequence[int] = (),
    vocab_size: int | None = None,
    batch_size: int = 8,
) -> dict:
    """heads.json content of `abft heads`: {layer: [heads]} of ABFT's filter plus the three views' scores."""
    stats = label_head_scores(model, prompts, pad_id, num_classes, objective, circuit_factor, batch_size)
    circuit = {key: stats.pop(key) for key in ("circuit_rate", "circuit_correct_rate", "correctness")}
    abft = heads_summary(stats, min_rate)
    score = prefix_matching_scores(model, induction_length, induction_sequences, seed, prefix, exclude, vocab_size)
    return {
        "prompts": len(prompts),
        "induction_heads": abft["induction_heads"],
        "abft_filter": abft,
        "circuit_filter": {
            "factor": circuit_factor,
            "min_rate": min_rate,
            "induction_heads": _layers(circuit["circuit_rate"] >= min_rate),
            "correct_induction_heads": _layers(circuit["circuit_correct_rate"] >= min_rate),
            "mean_heads_per_prompt": float(circuit["circuit_rate"].sum()),
            "rate": np.round(circuit["circuit_rate"], 6).tolist(),
            "correct_rate": np.round(circuit["circuit_correct_rate"], 6).tolist(),
            "correctness": np.round(circuit["correctness"], 6).tolist(),
        },
        "prefix_matching": {
            "length": induction_length,
            "sequences": induction_sequences,
            "seed": seed,
            "threshold": induction_threshold,
            "induction_heads": _layers(score > induction_threshold),
            "score": np.round(score, 6).tolist(),
        },
    }
