"""Per-head statistics of last-token attention on demonstration label tokens (what ABFT's filter sees), and
head discovery without training (`abft heads`): which heads attend to the demonstrations' labels, and which
are classic induction heads.

    stats = head_statistics(model, prompts, pad_id)   # arrays (L, H): heads.json of a run
    probs, parts = label_forward(model, batch, objective)   # one batch: (B, L, H, T) attention, per-prompt parts
    result = discover_heads(model, prompts, pad_id, num_classes, HeadsOptions(), prefix=[bos])
    result = find_heads(cfg, HeadsOptions(), output)    # the model and prompts of cfg; writes heads.json + PNGs

Three views, each per (layer, head):
- ABFT's filter (the one training uses, ABFTObjective.induction_heads via head_statistics): label
  mass S > k / (k + log n_t); reported as the fraction of prompts passing, and heads passing on >= min_rate.
- The looser threshold of the authors' earlier circuit work (Cho et al., ICLR 2025, "Revisiting In-context
  Learning Inference Circuit"): magnitude S > c / n_t, and correctness (mass on gold-label tokens minus
  mass on the other label tokens) > c / (n_t * C), with c = 5 and C the number of labels.
- Prefix matching on repeated random tokens [prefix] R R (R: `length` distinct non-special tokens): the mean
  attention from each token of the second copy to the token after that token's first occurrence, with full
  attention matrices (eager attention, output_attentions) on short sequences.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..attention import capture_last_row, use_last_row_attention
from ..batching import Batch, collate, length_batches
from ..config import RunConfig
from ..errors import UserError, param
from ..objectives import ABFTObjective
from ..rundir import atomic_write, default_output, make_output_dir
from .options import CIRCUIT_FACTOR, HeadsOptions
from .setup import load_setup


@torch.no_grad()
def label_forward(model, batch: Batch, objective: ABFTObjective) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One batch's last-token attention (B, L, H, T) and its per-prompt label statistics, each (B, L, H):
    label_mass, correct_mass, wrong_mass (attention on all / gold / other demonstration labels) and
    induction_rate (1.0 where the head passes ABFT's filter)."""
    use_last_row_attention(model)
    with capture_last_row(model) as cap:
        model(**batch.model_inputs(), logits_to_keep=1)  # the whole model: it may be an FSDP root
    label_probs = objective.label_attention(cap.probs, batch.label_positions.clamp(min=0))  # (B, L, H, k)
    valid, correct, wrong = batch.label_masks()
    parts = {
        "label_mass": (label_probs * valid[:, None, None, :]).sum(-1),
        "correct_mass": (label_probs * correct[:, None, None, :]).sum(-1),
        "wrong_mass": (label_probs * wrong[:, None, None, :]).sum(-1),
        "induction_rate": objective.induction_heads(label_probs, valid, batch.lengths).float(),
    }
    return cap.probs, parts


@torch.no_grad()
def head_statistics(
    model,
    prompts: Sequence,
    pad_id: int,
    objective: ABFTObjective | None = None,
    batch_size: int = 8,
    extra: Callable | None = None,
) -> dict[str, np.ndarray]:
    """Mean label-attention mass, mass on correct / wrong labels, and induction-head rate per (layer, head).

    `extra(batch, parts)` gets label_forward's per-prompt parts and may return more per-prompt (B, L, H)
    values to average (label_head_scores).
    """
    objective = objective or ABFTObjective()
    device = next(model.parameters()).device
    sums: dict[str, torch.Tensor] = {}
    for idx in length_batches(prompts, batch_size):
        batch = collate([prompts[i] for i in idx], pad_id).to(device)
        _, parts = label_forward(model, batch, objective)
        if extra is not None:
            parts.update(extra(batch, parts))
        for key, value in parts.items():
            sums[key] = sums.get(key, 0) + value.sum(0).double().cpu()
    return {key: (value / len(prompts)).numpy() for key, value in sums.items()}


def heads_by_layer(mask: np.ndarray) -> dict[str, list[int]]:
    """(L, H) bool -> {layer: [heads]} of the layers with at least one head set (heads.json's listing)."""
    layers = {str(layer): [int(h) for h in np.nonzero(mask[layer])[0]] for layer in range(mask.shape[0])}
    return {k: v for k, v in layers.items() if v}


def heads_summary(stats: dict[str, np.ndarray], min_rate: float = 0.5) -> dict:
    """heads.json content: {layer: [heads]} that pass the filter on at least `min_rate` of the prompts."""
    rate = stats["induction_rate"]
    return {
        "min_rate": min_rate,
        "induction_heads": heads_by_layer(rate >= min_rate),
        "mean_heads_per_prompt": float(rate.sum()),
        **{key: np.round(value, 6).tolist() for key, value in stats.items()},
    }


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


def find_heads(cfg: RunConfig, opts: HeadsOptions, output: str | Path | None = None, log=print) -> dict:
    """`abft heads`: discover heads on `opts.samples` calibration prompts of cfg's dataset; writes the output."""
    from ..data import dataset_stem, train_pairs

    opts.validate(cfg)
    out = Path(output or cfg.output or default_output("heads", cfg.model.model, dataset_stem(cfg.data.dataset)))
    if (out / "heads.json").exists():
        raise UserError(f"{out} already holds a heads.json; pick another {param('output')}")
    model, tokenizer, builder, dataset = load_setup(cfg)
    prompts = builder.build_pairs(dataset, train_pairs(dataset, cfg.data.k, opts.samples, cfg.seed))
    log(f"{len(prompts)} calibration prompts of {dataset.info.name}, k={cfg.data.k}; {cfg.model.model}")
    result = discover_heads(
        model,
        prompts,
        tokenizer.pad_token_id,
        len(dataset.info.label_words),
        opts,
        seed=cfg.seed,
        prefix=builder.prefix_ids,
        exclude=tokenizer.all_special_ids,
        vocab_size=len(tokenizer),
    )
    result = {"model": cfg.model.model, "dataset": dataset.info.name, "k": cfg.data.k, "seed": cfg.seed, **result}
    write_heads(result, out)
    for name, section in (("ABFT filter", "abft_filter"), ("circuit threshold", "circuit_filter")):
        log(f"{name}: {result[section]['mean_heads_per_prompt']:.2f} heads per prompt")
    log(f"prefix matching: {sum(len(v) for v in result['prefix_matching']['induction_heads'].values())} heads")
    log(f"wrote {out / 'heads.json'}")
    return result


def write_heads(result: dict, out: Path) -> None:
    from ..report.figures import label_heads_figure, prefix_matching_figure

    make_output_dir(out)
    atomic_write(out / "label_heads.png", label_heads_figure(result))
    atomic_write(out / "prefix_matching.png", prefix_matching_figure(result))
    atomic_write(out / "heads.json", json.dumps(result, indent=2) + "\n")
