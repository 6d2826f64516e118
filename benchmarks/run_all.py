"""`make bench`: every performance target of the project, measured side by side in one run.

Each workload runs in its own subprocess (benchmarks/workloads.py) so peak memory is per method. Each
side-by-side group (the reference and ours, ...) runs --repeats times (default 3), interleaved, its order
reversed every other round, so a change in machine load falls on both sides alike; a ratio is taken within
each round, and the table and results.json give the median of those ratios and their spread (min-max).
Writes benchmarks/results.json (latest figures) and prints a table; RESULTS.md holds the history.

    python benchmarks/run_all.py [--quick] [--skip-protocol] [--repeats N]
    python benchmarks/run_all.py --protocol-only    # only the `abft run` wall time, merged into results.json

The `abft run` timing may reuse a fore-test cached by an earlier identical run (--reuse-fore-test, as a user
may); results.json says whether it did (abft_run_fore_test_reused).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent


# glibc keeps freed heap memory for reuse, so a warm-up (or one larger micro-batch) would hide a later peak from
# RSS. Memory workloads therefore run with every allocation above 64 KiB mmapped and unmapped on free: RSS then
# follows the live tensors, for the reference and for ours alike (slower, so speed is measured separately).
LIVE_RSS = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def workload(*args: str, env: dict | None = None) -> dict:
    out = subprocess.run(
        [sys.executable, str(HERE / "workloads.py"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    if out.returncode != 0:
        raise SystemExit(f"workload {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def protocol_minutes() -> tuple[float, bool, dict]:
    """Wall minutes of `abft run` with paper defaults on SST-2, allowed to reuse a cached fore-test (the first
    such run on a machine pays for it); whether it did; and the run's timings.json (where the time went)."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "abft.cli",
                "run",
                "--dataset",
                "sst2",
                "--reuse-fore-test",
                "--output",
                f"{tmp}/run",
            ],
            check=True,
            capture_output=True,
            env={**os.environ, "ABFT_NO_PROGRESS": "1"},
        )
        minutes = (time.perf_counter() - start) / 60
        timings = json.loads(Path(tmp, "run", "timings.json").read_text())
        return minutes, "before_reused" in timings, timings


def interleaved(group: dict[str, tuple], repeats: int) -> dict[str, list[dict]]:
    """Run every workload of `group` (name -> workload() arguments, env) `repeats` times, round by round, the
    order reversed every other round; name -> its result in each round."""
    names = list(group)
    out: dict[str, list[dict]] = {name: [] for name in names}
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else names[::-1]:
            args, env = group[name]
            out[name].append(workload(*args, env=env))
    return out


def spread(baseline: list[float], ours: list[float], ratio=lambda base, ours: ours / base) -> dict:
    """Median and range of the per-round ratios, with the median of each side."""
    ratios = [ratio(b, o) for b, o in zip(baseline, ours, strict=True)]
    return {
        "ratio": statistics.median(ratios),
        "min": min(ratios),
        "max": max(ratios),
        "rounds": ratios,
        "baseline": statistics.median(baseline),
        "ours": statistics.median(ours),
    }


def previous_results() -> dict:
    path = HERE / "results.json"
    return json.loads(path.read_text()) if path.exists() else {}


def measure(quick: bool, repeats: int, results: dict) -> list[tuple]:
    """Every side-by-side target; fills `results` and returns the table's rows."""
    n4, n16, n_eval = ("8", "4", "64") if quick else ("24", "6", "256")
    rows = []

    def record(key: str, name: str, summary: dict, target: str) -> None:
        results[key] = summary["ratio"]
        results[f"{key}_spread"] = summary
        rows.append((name, summary, target))

    def values(runs: list[dict], key: str) -> list[float]:
        return [run[key] for run in runs]

    speed, mb, rate = "examples_per_s", "activation_mb", "prompts_per_s"
    k4 = ("train", "--k", "4", "--examples", n4)
    runs = interleaved(
        {
            "reference": ((*k4, "--impl", "reference"), None),
            "abft": ((*k4, "--impl", "ours"), None),
            "e2e": ((*k4, "--impl", "ours", "--method", "e2e"), None),
        },
        repeats,
    )
    ref4, ours4, e2e = (values(runs[name], speed) for name in ("reference", "abft", "e2e"))
    record("train_speedup_k4", "train k=4 SST-2 examples/s", spread(ref4, ours4), ">= 1.5x")
    time_ratio = spread(e2e, ours4)  # ABFT speed / E2E speed = E2E time / ABFT time
    record("e2e_over_abft_time", "E2E / ABFT time per example", time_ratio, "(paper: 2.2x)")

    k16 = ("train", "--k", "16", "--dataset", "agnews", "--examples", n16)
    runs = interleaved(
        {"reference": ((*k16, "--impl", "reference"), None), "abft": ((*k16, "--micro", "4"), None)}, repeats
    )
    ref16, ours16 = values(runs["reference"], speed), values(runs["abft"], speed)
    record("train_speedup_k16", "train k=16 AG News examples/s", spread(ref16, ours16), ">= 2x")

    memory = ("train", "--k", "16", "--dataset", "agnews", "--examples", "2")  # the peak is per example
    runs = interleaved(
        {
            "reference": ((*memory, "--impl", "reference"), LIVE_RSS),
            "one": ((*memory, "--micro", "1"), LIVE_RSS),  # one example per forward, as the reference
            "two": ((*memory, "--micro", "2"), LIVE_RSS),
        },
        repeats,
    )
    ref_mb = values(runs["reference"], mb)
    record(
        "train_memory_ratio_k16",
        "train k=16 activation MB, 1 example/forward",
        spread(ref_mb, values(runs["one"], mb)),
        "<= 0.5",
    )
    two = spread(ref_mb, values(runs["two"], mb))
    record("train_memory_ratio_k16_micro2", "train k=16 activation MB, ours 2/forward", two, "(for comparison)")

    evals = ("eval", "--prompts", n_eval)
    runs = interleaved(
        {"staicc": ((*evals, "--impl", "staicc"), None), "ours": ((*evals, "--impl", "ours"), None)}, repeats
    )
    eval_speed = spread(values(runs["staicc"], rate), values(runs["ours"], rate))
    record("eval_speedup_vs_staicc", "eval SST-2 prompts/s", eval_speed, ">= 2x")

    runs = interleaved({"flops": (("flops",), None)}, repeats)["flops"]  # peak and ours in one process
    peak = values(runs, "matmul_gflops_per_s")
    for what in ("train", "eval"):
        fraction = spread(peak, values(runs, f"{what}_gflops_per_s"))
        record(f"{what}_peak_fraction", f"{what} GFLOP/s vs matmul peak", fraction, ">= 0.5")

    k4_memory = ("train", "--k", "4", "--examples", "8", "--micro", "8")  # one micro-batch of 8, live RSS
    runs = interleaved({"abft": (k4_memory, LIVE_RSS), "e2e": ((*k4_memory, "--method", "e2e"), LIVE_RSS)}, repeats)
    e2e_memory = spread(values(runs["abft"], mb), values(runs["e2e"], mb), lambda base, ours: ours / max(base, 1e-9))
    record("e2e_over_abft_memory", "E2E / ABFT activation MB, k=4, 8/forward", e2e_memory, "-")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer examples (noisier)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of each side-by-side group (median, spread)")
    parser.add_argument("--skip-protocol", action="store_true", help="skip the whole `abft run` timing")
    parser.add_argument(
        "--protocol-only", action="store_true", help="only the `abft run` timing, merged into results.json"
    )
    args = parser.parse_args()
    if args.protocol_only:
        minutes, reused, timings = protocol_minutes()
        results = previous_results()
        results.update(
            abft_run_minutes=minutes,
            abft_run_fore_test_reused=reused,
            abft_run_timings=timings,
            abft_run_date=time.strftime("%Y-%m-%d"),
        )
        (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        print(f"abft run: {minutes:.1f} minutes (fore-test reused: {reused}); wrote {HERE / 'results.json'}")
        return
    results: dict = {  # --skip-protocol keeps the last measured `abft run` figures
        **{key: value for key, value in previous_results().items() if key.startswith("abft_run")},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor()}",
        "date": time.strftime("%Y-%m-%d"),
        "repeats": args.repeats,
    }
    rows = measure(args.quick, args.repeats, results)
    if not args.skip_protocol:
        minutes, reused, timings = protocol_minutes()  # one run: 13 minutes on 2 cores
        results.update(abft_run_minutes=minutes, abft_run_fore_test_reused=reused, abft_run_timings=timings)
        what = "`abft run` SST-2 minutes" + (" (fore-test reused)" if reused else "")
        rows.append(
            (what, {"ratio": minutes, "min": minutes, "max": minutes, "baseline": None, "ours": minutes}, "<= 8")
        )
    print_table(rows, args.repeats)
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {HERE / 'results.json'}")


def print_table(rows: list[tuple], repeats: int) -> None:
    print(f"medians of {repeats} interleaved rounds; spread = min-max of the per-round ratios")
    print(f"{'measure':<44}{'baseline':>10}{'abft':>10}{'ratio':>8}  {'spread':<13} target")
    for name, s, target in rows:
        base = "-" if s["baseline"] is None else f"{s['baseline']:.3f}"
        print(f"{name:<44}{base:>10}{s['ours']:>10.3f}{s['ratio']:>8.2f}  {s['min']:.2f}-{s['max']:<8.2f} {target}")


if __name__ == "__main__":
    main()
