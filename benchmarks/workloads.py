"""One measured workload per subprocess (so peak memory is per method), printed as one JSON line.

    python benchmarks/workloads.py train --impl ours|reference --dataset sst2 --k 4 --examples 16
    python benchmarks/workloads.py eval --impl ours|staicc --prompts 128
    python benchmarks/workloads.py matmul

"reference" is the obvious ABFT step: eager attention with output_attentions=True, the full model forward
with logits, batch 1, the loss from the returned attention tensors. "staicc" is StaICC's own scorer
(prefabricate_inference.model_kernel.standard_ICL_inference_with_torch_Causal_LM), one prompt at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time

import torch

from abft.batching import collate
from abft.config import TrainConfig
from abft.data import PromptBuilder, default_template, load_dataset, test_pairs, train_pairs
from abft.models import load_model
from abft.objectives import ABFTObjective


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples RSS every 2 ms in a thread: the peak of a section, not of the whole process."""

    def __enter__(self):
        self.peak, self.running = rss_bytes(), True
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self):
        while self.running:
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()


def prompts_for(tokenizer, dataset: str, k: int, n: int, split: str):
    ds = load_dataset(dataset)
    builder = PromptBuilder(tokenizer, ds.info.label_words, default_template(ds.info))
    pairs = train_pairs(ds, k, n, 0) if split == "train" else test_pairs(ds, k, n)
    return builder, builder.build_pairs(ds, pairs)


def reference_step(model, prompt, objective, penalty=0.5, reward=1.0):
    """The straightforward ABFT step on one prompt."""
    ids = torch.tensor([prompt.input_ids])
    out = model(input_ids=ids, output_attentions=True)
    probs = torch.stack([a[:, :, -1, :] for a in out.attentions], dim=1)  # (1, L, H, T)
    loss, heads = objective(
        probs,
        torch.tensor([prompt.label_positions]),
        torch.tensor([prompt.demo_labels]),
        torch.tensor([prompt.gold]),
        torch.tensor([len(prompt.input_ids)]),
        penalty,
        reward,
    )
    loss.sum().backward()


def train_workload(args) -> dict:
    attn = "eager" if args.impl == "reference" else "sdpa"
    model, tok = load_model("smollm2-135m")
    if attn == "eager":
        model.set_attn_implementation("eager")
    builder, prompts = prompts_for(tok, args.dataset, args.k, args.examples + 2, "train")
    warm, prompts = prompts[:2], prompts[2:]
    cfg = TrainConfig(
        method=args.method, pseudo_batch_size=len(prompts), micro_batch_size=args.micro, epochs=1, lr=1e-5
    )
    from abft.models.arch import find_qk_slices
    from abft.models.trainable import mark_trainable
    from abft.train import train

    if args.impl == "reference":
        params = mark_trainable(model, find_qk_slices(model))
        opt = torch.optim.Adam(params, lr=1e-5)
        objective = ABFTObjective()
        reference_step(model, warm[0], objective)
        opt.zero_grad()
        base = rss_bytes()
        with PeakRSS() as peak:
            start = time.perf_counter()
            for p in prompts:
                reference_step(model, p, objective)
            opt.step()
            seconds = time.perf_counter() - start
    else:
        train(
            model,
            warm,
            TrainConfig(method=args.method, pseudo_batch_size=2, epochs=1, lr=1e-5),
            tok.pad_token_id,
            builder.label_token_ids,
        )
        base = rss_bytes()
        with PeakRSS() as peak:
            start = time.perf_counter()
            train(model, prompts, cfg, tok.pad_token_id, builder.label_token_ids)
            seconds = time.perf_counter() - start
    tokens = sum(len(p.input_ids) for p in prompts) / len(prompts)
    return {
        "examples_per_s": len(prompts) / seconds,
        "activation_mb": (peak.peak - base) / 2**20,
        "mean_tokens": tokens,
        "seconds": seconds,
    }


def eval_workload(args) -> dict:
    model, tok = load_model("smollm2-135m")
    builder, prompts = prompts_for(tok, "sst2", 4, args.prompts, "test")
    if args.impl == "staicc":
        from StaICC.prefabricate_inference.model_kernel import standard_ICL_inference_with_torch_Causal_LM

        label_space = list(load_dataset("sst2").info.label_words)
        start = time.perf_counter()
        for p in prompts:
            standard_ICL_inference_with_torch_Causal_LM(p.text + " ", model, tok, label_space, cache_empty=None)
        seconds = time.perf_counter() - start
    else:
        from abft.evaluation.scoring import score_prompts

        score_prompts(model, prompts[:4], builder.label_token_ids, tok.pad_token_id)
        start = time.perf_counter()
        score_prompts(model, prompts, builder.label_token_ids, tok.pad_token_id, batch_size=args.batch)
        seconds = time.perf_counter() - start
    return {"prompts_per_s": len(prompts) / seconds, "seconds": seconds}


def flops_workload(args) -> dict:
    """FLOPs of one training micro-batch and one evaluation batch over their time, vs measured matmul peak."""
    from torch.utils.flop_counter import FlopCounterMode

    from abft.attention import capture_last_row, use_last_row_attention
    from abft.models.arch import find_qk_slices
    from abft.models.trainable import mark_trainable

    model, tok = load_model("smollm2-135m")
    builder, prompts = prompts_for(tok, "sst2", 4, 8, "test")
    batch = collate(prompts, tok.pad_token_id)
    labels = torch.tensor(builder.label_token_ids)

    def eval_once():
        with torch.no_grad():
            model(**batch.model_inputs(), logits_to_keep=1).logits[:, -1, labels]

    mark_trainable(model, find_qk_slices(model))
    use_last_row_attention(model)
    objective = ABFTObjective()

    def train_once():
        with capture_last_row(model) as cap:
            model.model(**batch.model_inputs())
        loss, _ = objective(cap.probs, batch.label_positions, batch.demo_labels, batch.gold, batch.lengths, 0.5, 1.0)
        loss.sum().backward()

    out = {}
    for name, fn in (("eval", eval_once), ("train", train_once)):
        fn()
        with FlopCounterMode(display=False) as counter:
            fn()
        flops = counter.get_total_flops()
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        out[f"{name}_gflops_per_s"] = flops / min(times) / 1e9
    out["matmul_gflops_per_s"] = matmul_peak()
    return out


def matmul_peak(n: int = 1536, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workload", choices=["train", "eval", "flops"])
    parser.add_argument("--impl", default="ours")
    parser.add_argument("--method", default="abft")
    parser.add_argument("--dataset", default="sst2")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--micro", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    os.environ["ABFT_NO_PROGRESS"] = "1"
    result = {"train": train_workload, "eval": eval_workload, "flops": flops_workload}[args.workload](args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
