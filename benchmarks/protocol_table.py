"""Issue 4's comparison: vanilla ICL, contextual calibration, E2E and ABFT on the robustness, generalization
and unseen-label protocols, one table per dataset.

    python benchmarks/protocol_table.py [--datasets sst2 trec] [--test-samples 100] [--runs runs/protocol-table]

Each (dataset, method) is an ordinary `abft run` with paper defaults and every protocol flag. Vanilla ICL and
calibration are the ABFT run's `before` stage (the base model on the same prompts), so the E2E run skips its
own (--no-fore-test); E2E and ABFT are their runs' `after` stage. A finished run directory is reused, so
re-running continues.
Writes benchmarks/protocol_table.json (one entry per dataset, others kept) and prints the Markdown tables
(copied into RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
FLAGS = ["--test-type", "normal", "template", "demo", "--generalization-test", "--unseen-label-test"]
FLAGS += ["--calibration", "contextual"]
COLUMNS = ("accuracy", "template consistency", "demo consistency", "in-domain", "out-of-domain", "unseen-label")


def run(dataset: str, method: str, test_samples: int, root: Path, *extra: str) -> dict:
    out = root / f"{dataset}-{method}"
    status = out / "status.json"
    if not (status.exists() and json.loads(status.read_text()).get("state") == "finished"):
        cmd = [sys.executable, "-m", "abft.cli", "run", "--dataset", dataset, "--method", method]
        cmd += ["--test-samples", str(test_samples), *FLAGS, *extra, "--output", str(out)]
        if out.exists():
            cmd.append("--overwrite")
        print(" ".join(cmd[2:]), flush=True)
        subprocess.run(cmd, check=True, env={**os.environ, "ABFT_NO_PROGRESS": "1"})
    return json.loads((out / "metrics.json").read_text())


def row(stage: dict, accuracy: float | None = None) -> dict:
    return {
        "accuracy": stage["accuracy"] if accuracy is None else accuracy,
        "template consistency": stage["template"]["consistency"],
        "demo consistency": stage["demo"]["consistency"],
        "in-domain": stage["generalization"]["in_domain_accuracy"],
        "out-of-domain": stage["generalization"]["out_of_domain_accuracy"],
        "unseen-label": stage["unseen_label"]["unseen_label"]["accuracy"],
    }


def table(abft: dict, e2e: dict) -> dict:
    before = abft["before"]
    calibration = {c: None for c in COLUMNS}
    contextual = before["calibration"].get("contextual") or before["calibration"]["calibrated"]  # older runs
    calibration["accuracy"] = contextual["accuracy"]
    return {
        "vanilla": row(before),
        "calibration": calibration,
        "E2E": row(e2e["after"]),
        "ABFT": row(abft["after"]),
        "zero-shot": {**{c: None for c in COLUMNS}, "accuracy": before["unseen_label"]["zero_shot"]["accuracy"]},
    }


def markdown(name: str, rows: dict) -> str:
    lines = [f"| {name} | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for method, values in rows.items():
        cells = ["-" if values[c] is None else f"{100 * values[c]:.1f}" for c in COLUMNS]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["sst2", "trec"])
    parser.add_argument("--test-samples", type=int, default=100)
    parser.add_argument("--runs", type=Path, default=Path("runs/protocol-table"))
    args = parser.parse_args()
    out = HERE / "protocol_table.json"
    results = json.loads(out.read_text()) if out.exists() else {}  # other datasets' tables are kept
    for dataset in args.datasets:
        abft = run(dataset, "abft", args.test_samples, args.runs)
        e2e = run(dataset, "e2e", args.test_samples, args.runs, "--no-fore-test")
        results[dataset] = {"test_samples": args.test_samples, "rows": table(abft, e2e)}
        print(markdown(dataset, results[dataset]["rows"]), flush=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
