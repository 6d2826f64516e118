"""Issue 17 item 5: does a per-layer ("local") ABFT gradient keep the accuracy gain, and what does it save?

Full ABFT back-propagates each head's attention loss through the whole residual stream, so a layer's W_Q/W_K
also learn from the losses of later layers. "Local": the inputs of every attention block's Q/K projections and
its output are detached, so W_Q/W_K of layer l learn only from layer l's own heads and the backward pass is
only the Q/K projections and the score rows (no MLPs, no value path). This script trains both on the same
prompts with the default recipe, scores VALIDATION prompts (demonstration split, never the test split) at
the recipe's steps, and measures step time and the tensors autograd saves, side by side (interleaved).

    python benchmarks/local_loss.py --dataset sst2 --train-samples 256 --val 256
Writes benchmarks/local_loss.json (one entry per dataset, merged) and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path

import torch

from abft.attention import capture_last_row, use_last_row_attention
from abft.batching import collate
from abft.config import TrainConfig
from abft.data import PromptBuilder, default_template, load_dataset, train_pairs, validation_pairs
from abft.evaluation import evaluate_prompts
from abft.models import load_model
from abft.models.arch import find_qk_slices
from abft.objectives import ABFTObjective
from abft.recipe import resolve
from abft.train import train
from abft.validation import ValidationMonitor

OUT = Path(__file__).with_name("local_loss.json")


@contextlib.contextmanager
def local_gradient(model):
    """Detach the inputs of each attention block's Q/K projections and the block's output: each layer's
    W_Q/W_K then get gradients from their own layer's attention rows only."""
    modules = dict(model.named_modules())
    blocks, projections = set(), set()
    for s in find_qk_slices(model):
        projection = s.param.rsplit(".", 1)[0]  # '<...>.self_attn.q_proj'
        projections.add(projection)
        blocks.add(projection.rsplit(".", 1)[0])  # its attention block
    handles = [modules[p].register_forward_pre_hook(lambda m, args: (args[0].detach(), *args[1:])) for p in projections]
    handles += [modules[b].register_forward_hook(lambda m, args, out: (out[0].detach(), *out[1:])) for b in blocks]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def saved_bytes(model, batch) -> int:
    """Bytes of the tensors autograd keeps for backward during one training forward (activation memory)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), capture_last_row(model):
        model(**batch.model_inputs(), logits_to_keep=1)
    return total


def one_step(model, batch, objective, params) -> float:
    start = time.perf_counter()
    with capture_last_row(model) as cap:
        model(**batch.model_inputs(), logits_to_keep=1)
    loss, _ = objective(cap.probs, batch.label_positions, batch.demo_labels, batch.gold, batch.lengths, 0.5, 1.0)
    loss.sum().backward()
    seconds = time.perf_counter() - start
    for p in params:
        p.grad = None
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dataset", default="sst2")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--train-samples", type=int, default=256)
    parser.add_argument("--val", type=int, default=256)
    parser.add_argument("--speed-repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tok = load_model(args.model)
    ds = load_dataset(args.dataset)
    builder = PromptBuilder(tok, ds.info.label_words, default_template(ds.info))
    val = builder.build_pairs(ds, validation_pairs(ds, args.k, args.val))
    prompts = builder.build_pairs(ds, train_pairs(ds, args.k, args.train_samples, 0))
    classes, pad, labels = len(ds.info.label_words), tok.pad_token_id, builder.label_token_ids
    slices = find_qk_slices(model)
    params = dict(model.named_parameters())
    state0 = {k: v.clone() for k, v in model.state_dict().items()}
    result = {"model": args.model, "dataset": args.dataset, "train_samples": args.train_samples,
              "validation_prompts": len(val), "variants": {}}  # fmt: skip
    for variant in ("full", "local"):
        model.load_state_dict(state0)
        cfg = TrainConfig()
        choices = resolve(cfg, model)
        monitor = ValidationMonitor(
            lambda m: evaluate_prompts(m, val, labels, pad, classes, 16, "validating")[0], cfg.val_every, cfg.keep
        )
        start = time.perf_counter()
        with local_gradient(model) if variant == "local" else contextlib.nullcontext():
            records = train(model, prompts, cfg, pad, labels, seed=0, monitor=monitor)
        summary = monitor.summary()
        result["variants"][variant] = {
            "recipe": choices,
            "train_seconds": time.perf_counter() - start,
            "step_seconds_median": statistics.median(r.seconds for r in records),
            "curve": summary["curve"],
            "kept_step": summary["kept_step"],
            "best_val_accuracy": summary["best_accuracy"],
            "last_val_accuracy": summary["curve"][-1]["accuracy"],
            "heads_first_last": [records[0].heads, records[-1].heads],
        }
        print(variant, [(c["step"], round(c["accuracy"], 3)) for c in summary["curve"]], flush=True)
    model.load_state_dict(state0)
    # Speed and activation memory, interleaved: one micro-batch of the default size, both variants per round.
    cfg = TrainConfig()
    resolve(cfg, model)
    objective = ABFTObjective.from_config(cfg, len(builder.prefix_ids))
    trainable = [params[n] for n in {s.param for s in slices}]
    for p in params.values():
        p.requires_grad_(any(p is t for t in trainable))
    use_last_row_attention(model)
    batch = collate(prompts[: cfg.micro_batch_size], pad)
    times = {"full": [], "local": []}
    memory = {}
    for round_ in range(args.speed_repeats + 1):
        for variant in ("full", "local") if round_ % 2 else ("local", "full"):
            with local_gradient(model) if variant == "local" else contextlib.nullcontext():
                seconds = one_step(model, batch, objective, trainable)
                memory[variant] = saved_bytes(model, batch)
            if round_:  # round 0 warms up
                times[variant].append(seconds)
    for variant in times:
        v = result["variants"][variant]
        v["micro_batch_seconds_median"] = statistics.median(times[variant])
        v["micro_batch_seconds"] = times[variant]
        v["saved_activation_mib"] = memory[variant] / 2**20
    result["micro_batch_size"] = cfg.micro_batch_size
    result["speedup"] = times["full"] and statistics.median(
        full / local for full, local in zip(times["full"], times["local"], strict=True)
    )
    results = json.loads(OUT.read_text()) if OUT.exists() else {}
    results[f"{args.model}/{args.dataset}"] = result
    OUT.write_text(json.dumps(results, indent=1) + "\n")
    print(f"{'':8}{'best val':>10}{'last val':>10}{'kept':>6}{'step s':>9}{'micro s':>9}{'saved MiB':>11}")
    for variant, v in result["variants"].items():
        accuracy = f"{v['best_val_accuracy']:>10.3f}{v['last_val_accuracy']:>10.3f}{v['kept_step']:>6}"
        cost = f"{v['step_seconds_median']:>9.2f}{v['micro_batch_seconds_median']:>9.3f}"
        cost += f"{v['saved_activation_mib']:>11.1f}"
        print(f"{variant:8}{accuracy}{cost}")
    print(f"speed-up of a micro-batch step (median of interleaved ratios): {result['speedup']:.2f}x")


if __name__ == "__main__":
    main()
