"""Head discovery without training: which heads attend to the demonstrations' labels, and which are classic
induction heads.

    result = discover_heads(model, prompts, pad_id, num_classes, HeadsOptions(), prefix=[bos])  # heads.json

Three views, each per (layer, head):
- ABFT's filter (the one training uses, ABFTObjective.induction_heads via heads.head_statistics): label
  mass S > k / (k + log n_t); reported as the fraction of prompts passing, and heads passing on >= min_rate.
- The looser threshold of the authors' earlier circuit work (Cho et al., ICLR 2025, "Revisiting In-context
  Learning Inference Circuit"): magnitude S > c / n_t, and correctness (mass on gold-label tokens minus
  mass on the other label tokens) > c / (n_t * C), with c = 5 and C the number of labels.
- Prefix matching on repeated random tokens [prefix] R R (R: `length` distinct non-special tokens): the mean
  attention from each token of the second copy to the token after that token's first occurrence, with full
  attention matrices (eager attention, output_attentions) on short sequences.

numpy, torch and the model code are imported on use: `abft --help` reads HeadsOptions' defaults from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ..objectives import ABFTObjective

CIRCUIT_FACTOR = 5.0


@dataclass
class HeadsOptions:
    """`abft heads`' settings (its flags, abft.report.commands.HEADS_FLAGS)."""

    samples: int = 64
    min_rate: float = 0.5
    circuit_factor: float = CIRCUIT_FACTOR
    induction_length: int = 32
    induction_sequences: int = 8
    induction_threshold: float = 0.4
    log_base: str = "e"
    batch_size: int = 8


def circuit_heads(
    magnitude: torch.Tensor,
    correctness: torch.Tensor,
    n_tokens: torch.Tensor,
    num_classes: int,
    factor: float = CIRCUIT_FACTOR,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L, H) label mass and correctness (gold-label minus other-label mass) -> magnitude pass and
    correctness pass (bool, (B, L, H)) of the circuit threshold."""
    threshold = (factor / n_tokens.double()).float()[:, None, None]  # (B, 1, 1)
    return magnitude > threshold, correctness > threshold / num_classes


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
    from ..heads import head_statistics

    def extra(batch, parts):
        correctness = parts["correct_mass"] - parts["wrong_mass"]
        magnitude, correct_pass = circuit_heads(parts["label_mass"], correctness, batch.lengths, num_classes, factor)
        # correctness per prompt, so its mean is that of the float32 differences
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
    import torch

    j = torch.arange(length, device=attentions.device)
    dest = prefix + length + j
    src = prefix + 1 + j
    return attentions[..., dest, src].mean(dim=(0, -1))


def repeated_sequences(
    model,
    length: int = 32,
    sequences: int = 8,
    seed: int = 0,
    prefix: Sequence[int] = (),
    exclude: Sequence[int] = (),
    vocab_size: int | None = None,
) -> torch.Tensor:
    """(sequences, len(prefix) + 2 * length) token ids [prefix] R R, R drawn without repetition from ids <
    vocab_size (default: the model's) minus `exclude` and `prefix`."""
    import torch

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
    return torch.stack(rows)


def prefix_matching_scores(
    model,
    length: int = 32,
    sequences: int = 8,
    seed: int = 0,
    prefix: Sequence[int] = (),
    exclude: Sequence[int] = (),
    vocab_size: int | None = None,
) -> np.ndarray:
    """(L, H) induction (prefix-matching) score of every head on `sequences` repeated random sequences
    (repeated_sequences)."""
    import torch

    ids = repeated_sequences(model, length, sequences, seed, prefix, exclude, vocab_size)
    ids = ids.to(next(model.parameters()).device)
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model.base_model(
                input_ids=ids, attention_mask=torch.ones_like(ids), output_attentions=True, use_cache=False
            )
    finally:
        model.set_attn_implementation(previous)
    attentions = torch.stack([a.float() for a in out.attentions], dim=1)  # (B, L, H, T, T)
    return induction_stripe(attentions, len(prefix), length).double().cpu().numpy()


def discover_heads(
    model,
    prompts: Sequence,
    pad_id: int,
    num_classes: int,
    opts: HeadsOptions | None = None,
    *,
    seed: int = 0,
    prefix: Sequence[int] = (),
    exclude: Sequence[int] = (),
    vocab_size: int | None = None,
) -> dict:
    """heads.json content of `abft heads`: {layer: [heads]} of ABFT's filter plus the three views' scores
    (`opts.samples` is the caller's: `prompts` are the calibration prompts)."""
    import numpy as np

    from ..heads import heads_by_layer, heads_summary
    from ..objectives import ABFTObjective

    opts = opts or HeadsOptions()
    objective = ABFTObjective(log_base=opts.log_base)
    stats = label_head_scores(model, prompts, pad_id, num_classes, objective, opts.circuit_factor, opts.batch_size)
    circuit = {key: stats.pop(key) for key in ("circuit_rate", "circuit_correct_rate", "correctness")}
    abft = heads_summary(stats, opts.min_rate)
    score = prefix_matching_scores(
        model, opts.induction_length, opts.induction_sequences, seed, prefix, exclude, vocab_size
    )
    return {
        "prompts": len(prompts),
        "induction_heads": abft["induction_heads"],
        "abft_filter": abft,
        "circuit_filter": {
            "factor": opts.circuit_factor,
            "min_rate": opts.min_rate,
            "induction_heads": heads_by_layer(circuit["circuit_rate"] >= opts.min_rate),
            "correct_induction_heads": heads_by_layer(circuit["circuit_correct_rate"] >= opts.min_rate),
            "mean_heads_per_prompt": float(circuit["circuit_rate"].sum()),
            "rate": np.round(circuit["circuit_rate"], 6).tolist(),
            "correct_rate": np.round(circuit["circuit_correct_rate"], 6).tolist(),
            "correctness": np.round(circuit["correctness"], 6).tolist(),
        },
        "prefix_matching": {
            "length": opts.induction_length,
            "sequences": opts.induction_sequences,
            "seed": seed,
            "threshold": opts.induction_threshold,
            "induction_heads": heads_by_layer(score > opts.induction_threshold),
            "score": np.round(score, 6).tolist(),
        },
    }
