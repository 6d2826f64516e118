"""Recipe search for ABFT on the embedded model, scored on a VALIDATION set (never the test split).

Validation prompts: queries and demonstrations both from the demonstration split (query excluded from
its own demonstrations), seeded. Prints one JSON line per configuration.

    python benchmarks/recipe.py --lr 1e-4 --epochs 2 --train-samples 512
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from abft.analysis.heads import head_statistics
from abft.config import TrainConfig
from abft.data import PromptBuilder, default_template, load_dataset, train_pairs, validation_pairs
from abft.evaluation import evaluate_prompts
from abft.models import load_model
from abft.train import train


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dataset", default="sst2")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--val", type=int, default=256)
    parser.add_argument("--train-samples", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    for f in dataclasses.fields(TrainConfig):
        if f.type in ("float", "int", "str"):
            parser.add_argument("--" + f.name.replace("_", "-"), type=eval(f.type), default=f.default)
    parser.add_argument("--pid", type=float, nargs=3, default=(0.03, 0.005, 0.005))
    parser.add_argument("--no-head-filter", action="store_true")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    cfg = TrainConfig(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    )
    cfg.pid = tuple(args.pid)
    cfg.head_filter = not args.no_head_filter
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_model(args.model)
    ds = load_dataset(args.dataset)
    builder = PromptBuilder(tok, ds.info.label_words, default_template(ds.info))
    val = builder.build_pairs(ds, validation_pairs(ds, args.k, args.val))
    tr = builder.build_pairs(ds, train_pairs(ds, args.k, args.train_samples, args.seed))
    c = len(ds.info.label_words)
    before, _ = evaluate_prompts(model, val, builder.label_token_ids, tok.pad_token_id, c)
    hb = head_statistics(model, val[:64], tok.pad_token_id)
    t = time.time()
    log = train(model, tr, cfg, tok.pad_token_id, builder.label_token_ids, seed=args.seed)
    seconds = time.time() - t
    after, _ = evaluate_prompts(model, val, builder.label_token_ids, tok.pad_token_id, c)
    ha = head_statistics(model, val[:64], tok.pad_token_id)
    mass = {
        f"{k}_{tag}": round(float(h[k].sum()), 2)
        for tag, h in (("before", hb), ("after", ha))
        for k in ("label_mass", "correct_mass", "induction_rate")
    }
    heads = [round(r.heads, 1) for r in log]
    print(
        json.dumps(
            {
                "model": args.model,
                "dataset": args.dataset,
                "cfg": {k: v for k, v in dataclasses.asdict(cfg).items()},
                "before": round(before["accuracy"], 4),
                "after": round(after["accuracy"], 4),
                "copy_before": round(before["copies_last_label"], 3),
                "copy_after": round(after["copies_last_label"], 3),
                "heads": heads[:: max(1, len(heads) // 8)],
                "A_last": round(log[-1].penalty, 3),
                **mass,
                "train_s": round(seconds, 1),
                "s_per_example": round(seconds / (len(tr) * cfg.epochs), 3),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
