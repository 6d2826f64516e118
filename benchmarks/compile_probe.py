"""Does torch.compile pay on this CPU? Eager vs compiled scoring of the same SST-2 test prompts, side by side.

    python benchmarks/compile_probe.py [--prompts 256] [--batch 16]

Prints one JSON line: prompts/s eager and compiled (after a warm-up over every batch shape, whose cost is
reported separately as compile_seconds), the ratio, and the largest logit difference.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from workloads import prompts_for

from abft.batching import collate, length_batches
from abft.models import load_model


def score(model, batches) -> tuple[float, list[torch.Tensor]]:
    out = []
    start = time.perf_counter()
    with torch.no_grad():
        for batch in batches:
            out.append(model(**batch.model_inputs(), logits_to_keep=1).logits[:, -1])
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    model, tok = load_model("smollm2-135m")
    _, prompts = prompts_for(tok, "sst2", 4, args.prompts, "test")
    batches = [collate([prompts[i] for i in idx], tok.pad_token_id) for idx in length_batches(prompts, args.batch)]
    score(model, batches[:2])  # warm-up
    compiled = torch.compile(model, dynamic=True)
    start = time.perf_counter()
    score(compiled, batches)  # compiles (dynamic shapes: one graph for every length, ideally)
    compile_seconds = time.perf_counter() - start
    eager_s, eager_out = score(model, batches)
    compiled_s, compiled_out = score(compiled, batches)
    eager_s2, _ = score(model, batches)  # eager again: the machine's drift between the two measurements
    diff = max((a - b).abs().max().item() for a, b in zip(eager_out, compiled_out, strict=True))
    print(
        json.dumps(
            {
                "prompts": len(prompts),
                "eager_prompts_per_s": len(prompts) / min(eager_s, eager_s2),
                "compiled_prompts_per_s": len(prompts) / compiled_s,
                "speedup": min(eager_s, eager_s2) / compiled_s,
                "compile_seconds": compile_seconds,
                "max_logit_diff": diff,
            }
        )
    )


if __name__ == "__main__":
    main()
