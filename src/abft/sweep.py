"""Data-efficiency sweep: `abft run` for ABFT and E2E at several training-set sizes, and one table.

    abft sweep --dataset sst2 --sizes 32 128 256 512 1024 --methods abft e2e --output runs/sweep-sst2
    table = sweep(cfg, sizes=(32, 128), methods=("abft", "e2e"), output="runs/sweep-sst2")

Each (method, size) is an ordinary run directory `<output>/<method>-<size>` (same seed, same test prompts,
the base model loaded afresh). Only the first run tests the base model; the others reuse its `before` metrics
through the fore-test cache (--reuse-fore-test; runs with MAUVE test it each time). A
finished run directory is reused, an interrupted one is resumed from its checkpoint, so re-running the same
command continues a sweep. `<output>/sweep.json` holds the table, which is also printed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path

from .config import RunConfig
from .data import dataset_stem
from .errors import UserError, param
from .objectives import OBJECTIVES

SIZES = (32, 128, 256, 512, 1024)
METHODS = ("abft", "e2e")  # the default methods; any registered objective may be swept


def sweep(
    cfg: RunConfig,
    sizes: Sequence[int] = SIZES,
    methods: Sequence[str] = METHODS,
    output: str | Path | None = None,
    overwrite: bool = False,
    log=print,
    on_run: Callable[[Path], None] | None = None,
) -> dict:
    """Run every (method, size) and return sweep.json's content: before accuracy and one row per run.
    `on_run(run_dir)` after each run made or resumed here (the CLI writes its report)."""
    from .rundir import RunDir, default_output  # here too: rundir imports torch (distributed)

    if not sizes or any(n < 1 for n in sizes):
        raise UserError(f"{param('sizes')} must be positive training-set sizes, got {list(sizes)}")
    if not methods or any(m not in OBJECTIVES for m in methods):
        raise UserError(f"{param('methods')} must be among {', '.join(OBJECTIVES)}, got {list(methods)}")
    root = Path(output or cfg.output or default_output(dataset_stem(cfg.data.dataset), "sweep"))
    out = RunDir(root)  # not a run directory itself; its write_json is atomic
    table: dict = {
        "dataset": Path(cfg.data.dataset).stem,
        "model": cfg.model.model,
        "k": cfg.data.k,
        "before_accuracy": None,  # the first run's
        "rows": [],
    }
    first = True
    for method in dict.fromkeys(methods):
        for size in dict.fromkeys(sizes):
            run_cfg = copy.deepcopy(cfg)
            run_cfg.train.method, run_cfg.data.train_samples = method, size
            run_cfg.output = str(root / f"{method}-{size}")
            run_cfg.eval.fore_test = run_cfg.eval.post_test = run_cfg.eval.reuse_fore_test = True
            log(f"sweep: {method} with {size} training prompts -> {run_cfg.output}")
            metrics = _run_or_reuse(run_cfg, overwrite, log, on_run)
            if first:
                table["before_accuracy"] = metrics.get("before", {}).get("accuracy")
                # Made here rather than before the loop so that options the first run rejects leave nothing behind
                # (the main process's run made it already; torchrun's other processes ran in a scratch directory).
                root.mkdir(parents=True, exist_ok=True)
                first = False
            before, after = table["before_accuracy"], metrics.get("after", {})
            table["rows"].append(
                {
                    "method": method,
                    "train_samples": size,
                    "accuracy": after.get("accuracy"),
                    "macro_f1": after.get("macro_f1"),
                    "gain": None if before is None or "accuracy" not in after else after["accuracy"] - before,
                    "run": run_cfg.output,
                }
            )
            out.write_json("sweep.json", table)
    log(format_sweep(table))
    return table


def _run_or_reuse(cfg: RunConfig, overwrite: bool, log, on_run) -> dict:
    from . import runner  # here: `abft --help` builds this module's parser without loading torch's stack
    from .rundir import METRICS_FILE, RunDir

    run = RunDir(Path(cfg.output))
    state = None if overwrite else run.state()
    if state == "finished":
        log("sweep: finished before, reusing its metrics.json")
        return run.read_json(METRICS_FILE) or {}
    if state is not None and run.read_json("config.json") is not None:
        metrics = runner.resume(cfg.output, log=log)
    else:
        metrics = runner.run(cfg, train=True, overwrite=overwrite, log=log)
    if on_run is not None:
        on_run(run.path)
    return metrics


def format_sweep(table: dict) -> str:
    """Accuracy (%) after training: one row per training-set size, one column per method."""
    from .evaluation.metrics import percent  # not at the top: abft.evaluation imports torch, `abft --help` does not

    methods = list(dict.fromkeys(r["method"] for r in table["rows"]))
    sizes = list(dict.fromkeys(r["train_samples"] for r in table["rows"]))
    cell = {(r["method"], r["train_samples"]): r["accuracy"] for r in table["rows"]}
    lines = [f"{'train samples':<15}" + "".join(f"{m:>10}" for m in methods)]
    lines += [f"{n:<15}" + "".join(f"{percent(cell.get((m, n))):>10}" for m in methods) for n in sizes]
    lines.append(f"{'before':<15}{percent(table['before_accuracy']):>10}")
    return "\n".join(lines)
