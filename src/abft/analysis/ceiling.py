"""`abft ceiling`: what ABFT's target attention is worth on a model, measured before training.

ABFT assumes the prediction follows the induction heads' attention on demonstration label tokens. This
re-scores held-out prompts (abft.data.validation_pairs: the demonstration split only) with the last
token's attention row edited in the heads ABFT's filter selects (on their own row, in the edited forward)
or in every head (abft.attention.edit_last_row), and reports accuracy and the recency copy rate per edit.
If the edits that move attention toward correct labels do not raise accuracy, ABFT cannot either.

Edits of a selected head's row p (I+ / I-: correct / wrong demonstration label tokens), renormalised:
    knockout  p[I+] = p[I-] = 0        the demonstration labels hidden from the last token
    drop      p[I-] = 0                the optimum of the wrong-label penalty alone
    move      p[I-]'s mass onto I+     label mass kept, all of it on correct labels
    target    p = uniform over I+      the optimum of the reward term (all mass on correct labels)
    swap      masses of I+ and I- exchanged, the adversary
move and swap spread a moved mass uniformly over the receiving label tokens. Only tokens the head can see
(padding, causality, a sliding window) take part. With no correct (or, for swap, no wrong) label in view,
move and target act as drop and swap as none.

    abft ceiling --dataset sst2 --samples 256                 # the base model
    abft ceiling --dataset sst2 --delta runs/sst2-abft-X      # after training: what is still left
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..attention import edit_last_row, use_last_row_attention
from ..errors import UserError, param
from ..evaluation.scoring import score_prompts
from ..limits import MAX_PROMPTS, check_at_least, check_at_most
from ..objectives import ABFTObjective
from ..rundir import atomic_write, default_output, make_output_dir, read_run_config
from .options import EDITS, HEAD_SETS
from .setup import load_setup


def edit_rows(p: torch.Tensor, correct: torch.Tensor, wrong: torch.Tensor, edit: str) -> torch.Tensor:
    """Edited rows (B, H, T) of last-row probabilities p (B, H, T); correct / wrong: (B, T) bool positions."""
    correct = correct[:, None, :].to(p.dtype)
    wrong = wrong[:, None, :].to(p.dtype)
    if edit == "none":
        return p
    n_correct, n_wrong = correct.sum(-1, keepdim=True), wrong.sum(-1, keepdim=True)
    on_correct, on_wrong = (p * correct).sum(-1, keepdim=True), (p * wrong).sum(-1, keepdim=True)
    dropped = p * (1 - wrong)
    if edit == "knockout":
        q = p * (1 - correct - wrong)
    elif edit == "drop":
        q = dropped
    elif edit == "move":
        q = torch.where(n_correct > 0, dropped + on_wrong * correct / n_correct.clamp(min=1), dropped)
    elif edit == "target":
        q = torch.where(n_correct > 0, correct / n_correct.clamp(min=1), dropped)
    elif edit == "swap":
        swapped = p * (1 - correct - wrong) + on_wrong * correct / n_correct.clamp(min=1)
        swapped = swapped + on_correct * wrong / n_wrong.clamp(min=1)
        q = torch.where((n_correct > 0) & (n_wrong > 0), swapped, p)
    else:
        raise ValueError(f"unknown edit {edit!r}; expected one of {EDITS}")
    return q / q.sum(-1, keepdim=True).clamp(min=torch.finfo(p.dtype).tiny)


def label_position_masks(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) bool masks of the correct and the wrong demonstration label tokens of a Batch."""
    positions = torch.arange(batch.input_ids.shape[1], device=batch.input_ids.device)
    at = positions[None, None, :] == batch.label_positions[:, :, None]  # (B, k, T)
    _, correct, wrong = batch.label_masks()
    return (at & correct[..., None]).any(1), (at & wrong[..., None]).any(1)


def edited_scores(
    model,
    prompts: Sequence,
    pad_id: int,
    label_token_ids: Sequence[int],
    edit: str,
    heads: str = "filter",
    objective: ABFTObjective | None = None,
    batch_size: int = 16,
) -> tuple[np.ndarray, float]:
    """Label distributions (N, C) of `prompts` scored with `edit` on `heads` ("filter": the heads passing
    ABFT's filter on their own row, as training decides; "all"), and the mean number of edited heads per
    prompt. Edit "none" is the plain model (no head edited)."""
    if heads not in HEAD_SETS:
        raise ValueError(f"heads must be one of {HEAD_SETS}, got {heads!r}")
    objective = objective or ABFTObjective()
    use_last_row_attention(model)
    edited = 0

    def around(batch):  # the edit of one batch: its label positions decide what moves where
        correct, wrong = label_position_masks(batch)
        valid = batch.label_masks()[0]
        positions = batch.label_positions.clamp(min=0)

        def edit_layer(layer, p, visible):
            nonlocal edited
            if heads == "all":
                select = torch.ones(p.shape[:2], dtype=torch.bool, device=p.device)
            else:  # the training filter on this row: (B, 1, H, k) label attention -> (B, H)
                label_probs = objective.label_attention(p[:, None], positions)
                select = objective.induction_heads(label_probs, valid, batch.lengths)[:, 0]
            edited += int(select.sum())
            return edit_rows(p, correct & visible, wrong & visible, edit), select

        return edit_last_row(model, edit_layer)

    probs = score_prompts(
        model,
        prompts,
        label_token_ids,
        pad_id,
        batch_size,
        f"ceiling {edit} ({heads})",
        around=None if edit == "none" else around,
    )
    return probs, edited / max(len(prompts), 1)


def attention_ceiling(
    cfg,
    samples: int = 256,
    edits: Sequence[str] = EDITS,
    head_sets: Sequence[str] = HEAD_SETS,
    delta: str | Path | None = None,
    output: str | Path | None = None,
    batch_size: int = 16,
    log=print,
) -> dict:
    """`abft ceiling`: every (head set, edit) on `samples` validation prompts; writes ceiling.json."""
    from ..data import dataset_stem, validation_pairs
    from ..evaluation.protocols import prompt_metrics
    from ..models.weights import check_trained, load_delta

    if delta is not None:  # the run's own model, dataset, k, label-token mode and filter settings
        check_trained(delta)
        run_cfg = read_run_config(delta)
        cfg.model, cfg.data, cfg.train = run_cfg.model, run_cfg.data, run_cfg.train
    check_at_least([("samples", samples, 1), ("batch_size", batch_size, 1), ("k", cfg.data.k, 1)])
    check_at_most([("samples", samples, MAX_PROMPTS)])
    out = Path(output) if output else default_output("ceiling", dataset_stem(cfg.data.dataset))
    if out.exists() and not out.is_dir():
        raise UserError(f"{param('output')} {out} is a file; give a directory")
    if (out / "ceiling.json").exists():
        raise UserError(f"{out} already holds a ceiling.json; pick another {param('output')}")
    model, tokenizer, builder, dataset = load_setup(cfg)
    if delta is not None:
        load_delta(model, delta)
    prompts = builder.build_pairs(dataset, validation_pairs(dataset, cfg.data.k, samples))
    objective = ABFTObjective.from_config(cfg.train, len(builder.prefix_ids))
    num_classes = len(dataset.info.label_words)
    log(f"{len(prompts)} validation prompts of {dataset.info.name} (demonstration split), k={cfg.data.k}")
    edits, head_sets = list(dict.fromkeys(edits)), list(dict.fromkeys(head_sets))
    plan = [("none", "filter")] if "none" in edits else []  # the unedited model, once (no head is edited)
    plan += [(edit, heads) for heads in head_sets for edit in edits if edit != "none"]
    rows = []
    for edit, heads in plan:
        probs, count = edited_scores(
            model,
            prompts,
            tokenizer.pad_token_id,
            builder.label_token_ids,
            edit,
            heads,
            objective,
            batch_size,
        )
        metrics = prompt_metrics(probs, prompts, num_classes)
        heads = "-" if edit == "none" else heads
        row = {"edit": edit, "heads": heads, "edited_heads_per_prompt": round(count, 2)}
        row.update({key: metrics[key] for key in ("accuracy", "macro_f1", "copies_last_label")})
        rows.append(row)
        log(
            f"{edit:<9}{heads:<8}accuracy {row['accuracy']:.4f}  copies last label "
            f"{row['copies_last_label']:.3f}  ({count:.1f} heads edited per prompt)"
        )
    result = {
        "model": cfg.model.model,
        "dataset": dataset.info.name,
        "k": cfg.data.k,
        "delta": str(delta) if delta is not None else None,
        "prompts": len(prompts),
        "rows": rows,
    }
    make_output_dir(out)
    atomic_write(out / "ceiling.json", json.dumps(result, indent=2) + "\n")
    log(f"wrote {out / 'ceiling.json'}")
    return result
