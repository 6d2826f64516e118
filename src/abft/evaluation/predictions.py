"""Per-prompt outputs of the normal test, like lm-evaluation-harness's logged samples: one JSON line per test
prompt (predictions_before.jsonl / predictions_after.jsonl in a run directory, abft.evaluate's "predictions").

    records = prediction_records(probs, prompts, label_words)              # before training
    records = prediction_records(probs, prompts, label_words, before=old)  # after: with "flipped"
    paired_change(before_records, after_records)                           # the change and its paired s.e.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np


def prediction_records(
    probs: np.ndarray, prompts: Sequence, label_words: Sequence[str], before: Sequence[dict] | None = None
) -> list[dict]:
    """One record per prompt: index, gold (label index) and gold_label, the label distribution `probs` (in
    label_words' order), prediction (argmax) and predicted_label, correct; with `before` (the same prompts'
    records before training) also flipped: whether the prediction changed."""
    if before is not None and len(before) != len(prompts):
        before = None  # not the same prompts (another --test-samples): no comparison
    out = []
    for i, (prompt, row) in enumerate(zip(prompts, np.asarray(probs), strict=True)):
        pred = int(np.argmax(row))
        record = {
            "index": i,
            "gold": int(prompt.gold),
            "gold_label": label_words[prompt.gold],
            "probs": [float(p) for p in row],
            "prediction": pred,
            "predicted_label": label_words[pred],
            "correct": pred == int(prompt.gold),
        }
        if before is not None:
            record["flipped"] = pred != int(before[i]["prediction"])
        out.append(record)
    return out


def to_jsonl(records: Sequence[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def read_jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def paired_change(before: Sequence[dict], after: Sequence[dict]) -> dict | None:
    """The change in accuracy between two evaluations of the same prompts, with its paired standard error:
    per prompt d = correct_after - correct_before (in {-1, 0, 1}); se = sd(d) / sqrt(n). Prompts that were
    right (or wrong) both times add nothing, so it is smaller than the independent-samples error
    sqrt(se_before^2 + se_after^2) whenever the two stages agree more than chance. None unless both are lists
    of the same length whose records all carry a boolean "correct" (the files are read back from a run
    directory, which may have been edited)."""
    ok = all(isinstance(r, dict) and isinstance(r.get("correct"), bool) for r in [*before, *after])
    n = len(before)
    if not ok or n != len(after) or n < 2:
        return None
    improved = sum(a["correct"] and not b["correct"] for b, a in zip(before, after, strict=True))
    worsened = sum(b["correct"] and not a["correct"] for b, a in zip(before, after, strict=True))
    mean = (improved - worsened) / n
    variance = (improved + worsened - n * mean**2) / (n - 1)
    return {"accuracy": mean, "se": math.sqrt(max(variance, 0.0) / n), "improved": improved,
            "worsened": worsened, "prompts": n}  # fmt: skip
