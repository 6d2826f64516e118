"""What could ABFT's target attention buy? Accuracy under edits of the last token's attention.

ABFT assumes the prediction follows the induction heads' attention on demonstration label tokens. This
script tests that assumption directly on VALIDATION prompts (queries and demonstrations from the
demonstration split, as benchmarks/recipe.py; never the test split): it re-runs the model with the last
token's attention row edited, in the heads ABFT's filter selects (or in every head), and reports accuracy
and how often the model copies the last demonstration's label.

Edits of a head's last-row attention p over key positions (I+ correct labels, I- wrong labels):
  knockout  p[I+ and I-] = 0, renormalised (the label tokens are invisible to the last token)
  drop      p[I-] = 0, renormalised (the optimum of the penalty term alone, B = 0)
  move      the mass on I- moves onto I+ (split equally), total label mass unchanged
  target    ABFT's loss optimum: all mass on I+, split equally (I+ empty: as knockout of I-)
  swap      the mass on I+ and I- exchanged (per position group, equally split): the adversary
The output of the edited head at the last position is recomputed from the edited row (p' V); every
other position and head is the model's own SDPA output.

    python benchmarks/attention_ceiling.py --dataset sst2 --val 256
    python benchmarks/attention_ceiling.py --delta /path/to/run_dir     # after ABFT / E2E training
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import AttentionInterface
from recipe import validation_pairs

from abft.batching import collate, length_batches
from abft.data import PromptBuilder, default_template, load_dataset
from abft.evaluation.protocols import recency_copy_rate
from abft.models import load_model
from abft.models.params import load_delta

NAME = "abft_ceiling_edit"
EDITS = ("none", "knockout", "drop", "move", "target", "swap")


class Edit:
    """The edit applied during one forward (module-level state read by the attention function)."""

    mode = "none"
    heads = "filter"  # "filter": heads passing ABFT's threshold on their own (current) row; "all"
    correct: torch.Tensor | None = None  # (B, T) bool: correct-label key positions
    wrong: torch.Tensor | None = None  # (B, T) bool
    threshold: torch.Tensor | None = None  # (B,) ABFT's k / (k + ln n_t)
    selected = 0  # heads edited, summed over the batch


def _last_row(module, query, key, attention_mask, scaling):
    batch, q_heads, _, dim = query.shape
    kv_heads = key.shape[1]
    q = query[:, :, -1].float().reshape(batch, kv_heads, q_heads // kv_heads, dim)
    scores = torch.matmul(q, key.float().transpose(-1, -2)).reshape(batch, q_heads, -1) * scaling
    if attention_mask is not None:  # left padding: the last query row is the last position
        row = attention_mask[:, :, -1, :]
        scores = scores.masked_fill(~row, -math.inf) if row.dtype == torch.bool else scores + row.float()
    return torch.softmax(scores, dim=-1)


def _edited(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(edited rows (B, H, T), (B, H) bool heads selected)."""
    correct = Edit.correct[:, None, :].float()
    wrong = Edit.wrong[:, None, :].float()
    labels = correct + wrong
    mass = (p * labels).sum(-1)
    select = mass > Edit.threshold[:, None] if Edit.heads == "filter" else torch.ones_like(mass, dtype=torch.bool)
    n_correct = correct.sum(-1, keepdim=True)
    n_wrong = wrong.sum(-1, keepdim=True)
    on_correct = (p * correct).sum(-1, keepdim=True)
    on_wrong = (p * wrong).sum(-1, keepdim=True)
    has_correct = n_correct > 0
    if Edit.mode == "knockout":
        q = p * (1 - labels)
    elif Edit.mode == "drop":
        q = p * (1 - wrong)
    elif Edit.mode == "move":
        q = p * (1 - wrong) + torch.where(has_correct, on_wrong / n_correct.clamp(min=1) * correct, 0 * p)
        q = torch.where(has_correct, q, p * (1 - wrong))
    elif Edit.mode == "target":
        q = torch.where(has_correct, correct / n_correct.clamp(min=1), p * (1 - wrong))
    elif Edit.mode == "swap":
        q = p * (1 - labels) + on_wrong / n_correct.clamp(min=1) * correct + on_correct / n_wrong.clamp(min=1) * wrong
        q = torch.where(has_correct & (n_wrong > 0), q, p)
    else:
        raise ValueError(Edit.mode)
    q = q / q.sum(-1, keepdim=True).clamp(min=1e-12)
    return torch.where(select[..., None], q, p), select


def _edit_attention(module, query, key, value, attention_mask, **kwargs):
    output, weights = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if Edit.mode == "none":
        return output, weights
    scaling = kwargs.get("scaling") or query.shape[-1] ** -0.5
    rows, select = _edited(_last_row(module, query, key, attention_mask, scaling))
    Edit.selected += int(select.sum())
    rep = query.shape[1] // value.shape[1]
    values = value.float().repeat_interleave(rep, dim=1)  # (B, H, T, D)
    last = torch.matmul(rows[:, :, None, :], values)[:, :, 0].to(output.dtype)  # (B, H, D)
    output = output.clone()
    output[:, -1] = torch.where(select[..., None], last, output[:, -1])
    return output, weights


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dataset", default="sst2")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--val", type=int, default=256)
    parser.add_argument("--delta", help="a run directory whose trained W_Q/W_K to apply first")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--edits", nargs="+", default=list(EDITS), choices=EDITS)
    parser.add_argument("--heads", nargs="+", default=["filter", "all"], choices=["filter", "all"])
    args = parser.parse_args()

    AttentionInterface.register(NAME, _edit_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    model, tok = load_model(args.model)
    if args.delta:
        load_delta(model, args.delta)
    model.set_attn_implementation(NAME)
    ds = load_dataset(args.dataset)
    builder = PromptBuilder(tok, ds.info.label_words, default_template(ds.info))
    prompts = builder.build_pairs(ds, validation_pairs(ds, args.k, args.val))
    labels = torch.tensor(builder.label_token_ids)
    for heads in args.heads:
        for mode in args.edits:
            if heads == "all" and mode == "none":
                continue
            Edit.mode, Edit.heads, Edit.selected = mode, heads, 0
            t = time.time()
            preds = [0] * len(prompts)
            for idx in length_batches(prompts, args.batch_size):
                batch = collate([prompts[i] for i in idx], tok.pad_token_id)
                pos = torch.arange(batch.input_ids.shape[1])
                is_label = (pos[None, None, :] == batch.label_positions[:, :, None]) & (batch.demo_labels >= 0)[..., None]
                good = batch.demo_labels == batch.gold[:, None]
                Edit.correct = (is_label & good[..., None]).any(1)
                Edit.wrong = (is_label & ~good[..., None]).any(1)
                k = (batch.demo_labels >= 0).sum(-1).double()
                Edit.threshold = (k / (k + torch.log(batch.lengths.double()))).float()
                with torch.no_grad():
                    logits = model(**batch.model_inputs(), logits_to_keep=1).logits[:, -1, labels]
                for i, p in zip(idx, logits.argmax(-1).tolist()):
                    preds[i] = p
            gold = [p.gold for p in prompts]
            print(
                json.dumps(
                    {
                        "dataset": args.dataset,
                        "delta": args.delta,
                        "heads": heads,
                        "edit": mode,
                        "accuracy": round(sum(p == g for p, g in zip(preds, gold)) / len(gold), 4),
                        "copies_last_label": round(recency_copy_rate(torch.tensor(preds).numpy(), prompts), 3),
                        "edited_heads_per_prompt": round(Edit.selected / len(prompts), 1),
                        "seconds": round(time.time() - t, 1),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
