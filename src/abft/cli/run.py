"""`abft run`, `abft evaluate`, `abft datasets` and `abft sweep`; `run` and `evaluate` write the HTML report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..config import SECTIONS, DataConfig, EvalConfig, ModelConfig, RunConfig
from ..objectives import OBJECTIVES
from .flags import add_fields, config_from_args, resume_changes, say


def register(sub) -> None:
    run = sub.add_parser(
        "run",
        help="accuracy before, ABFT (or E2E) training, accuracy after, saved weights",
        description="Run the paper's protocol on one dataset.",
    )
    for name, cls in SECTIONS.items():
        add_fields(run, cls, f"{name}.")
    add_fields(run, RunConfig, "")
    run.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run (its own config is used)")
    run.set_defaults(func=cmd_run, parser=run)

    ev = sub.add_parser(
        "evaluate",
        help="StaICC test protocol of an unchanged model",
        description="Evaluate in-context-learning accuracy (1024 StaICC test prompts).",
    )
    add_fields(ev, ModelConfig, "model.")
    add_fields(ev, DataConfig, "data.", skip={"train_samples"})
    add_fields(ev, EvalConfig, "eval.", skip={"fore_test", "post_test"})
    add_fields(ev, RunConfig, "", skip={"save", "checkpoint_every"})  # nothing trains
    ev.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    ev.set_defaults(func=cmd_evaluate, parser=ev)

    ds = sub.add_parser("datasets", help="list the bundled StaICC datasets")
    ds.set_defaults(func=cmd_datasets, parser=ds)


def register_sweep(sub) -> None:
    """`abft sweep`: every `abft run` option, plus --sizes and --methods."""
    from ..sweep import METHODS, SIZES

    parser = sub.add_parser(
        "sweep",
        help="data efficiency: ABFT and E2E at several training-set sizes, one table",
        description="Run `abft run` for each method and training-set size into OUTPUT/<method>-<size>; "
        "write OUTPUT/sweep.json. Re-running the same command reuses finished runs and resumes interrupted ones.",
    )
    for name, cls in SECTIONS.items():
        add_fields(parser, cls, f"{name}.", skip={"train_samples", "method", "fore_test", "post_test"})
    add_fields(parser, RunConfig, "")
    group = parser.add_argument_group("sweep")
    group.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=list(SIZES),
        metavar="N",
        help=f"training-set sizes (default: {' '.join(map(str, SIZES))})",
    )
    group.add_argument(
        "--methods",
        nargs="+",
        choices=OBJECTIVES.keys(),
        default=list(METHODS),
        help=f"methods (default: {' '.join(METHODS)})",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing run directories")
    parser.set_defaults(func=cmd_sweep, parser=parser)


def cmd_run(args: argparse.Namespace) -> int:
    from ..runner import resume, run

    if args.resume:
        changes = resume_changes(args, vars(args.parser.parse_args([])))
        resume(args.resume, log=say(args.parser), changes=changes)
        write_report(args.resume)
    else:
        cfg = config_from_args(args)
        run(cfg, train=True, overwrite=args.overwrite, log=say(args.parser))
        write_report(cfg.output)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..distributed import is_main
    from ..runner import run

    cfg = config_from_args(args)
    metrics = run(cfg, train=False, overwrite=args.overwrite, log=say(args.parser))
    write_report(cfg.output)
    if is_main():  # once under torchrun / accelerate launch
        print(json.dumps(metrics["before"], indent=2))
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from ..data import PAPER_DATASETS, list_datasets

    print(f"{'index':>5}  {'name':<22}{'calib/demo/test':<17}{'paper':<7}label words")
    for info in list_datasets():
        sizes = "/".join(str(n) for n in info.split_sizes)
        paper = "yes" if info.name in PAPER_DATASETS else ""
        print(f"{info.index:>5}  {info.name:<22}{sizes:<17}{paper:<7}{', '.join(info.label_words)}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from ..sweep import sweep

    cfg = config_from_args(args)
    sweep(cfg, args.sizes, args.methods, overwrite=args.overwrite, log=say(args.parser), on_run=write_report)
    return 0


def write_report(run_dir: str | Path) -> None:
    """report.html of a finished run, by the main process; a failure is logged, not raised (the results are
    saved, and `abft report` can redo it)."""
    from ..distributed import is_main

    if not is_main():
        return
    from ..report.html import write_report as write  # matplotlib loads here only

    try:
        print(f"report: {write(run_dir)}")
    except Exception as exc:  # noqa: BLE001 - see the docstring
        print(f"report: not written ({type(exc).__name__}: {exc}); retry with `abft report {run_dir}`")
