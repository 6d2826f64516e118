"""The `abft` command: one small function per subcommand, flags generated from abft.config.

abft run --model smollm2-135m --dataset sst2        # accuracy before, ABFT training, accuracy after
abft evaluate --dataset trec --k 4                  # the StaICC test protocol only
abft datasets                                       # the bundled datasets
abft report RUN_DIR | heads | interpolate A B       # analyses: see abft.report.commands
abft ceiling --dataset sst2                         # what ABFT's target attention would be worth
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from .config import DataConfig, EvalConfig, ModelConfig, RunConfig, TrainConfig
from .errors import UserError
from .signals import sigterm_as_interrupt

SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "eval": EvalConfig}


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _add_fields(parser: argparse.ArgumentParser, cls, prefix: str, skip=()) -> None:
    group = parser.add_argument_group(cls.__name__.replace("Config", "").lower() or "run")
    defaults = cls() if cls is not RunConfig else None
    for f in dataclasses.fields(cls):
        if f.name in skip or (cls is RunConfig and f.name in SECTIONS):
            continue
        dest = f"{prefix}{f.name}"
        default = getattr(defaults, f.name) if defaults else f.default
        meta = f.metadata
        if meta.get("negate"):
            group.add_argument(
                meta["negate"], dest=dest, action="store_false", default=default, help=f"turn off: {meta['help']}"
            )
        elif f.type in ("bool", bool):
            group.add_argument(_flag(f), dest=dest, action="store_true", default=default, help=meta["help"])
        else:
            kind = type(default[0]) if meta.get("nargs") else _scalar_type(f)
            group.add_argument(
                _flag(f),
                dest=dest,
                type=kind,
                default=default,
                choices=meta.get("choices"),
                nargs=meta.get("nargs"),
                metavar=None if meta.get("choices") else f.name.upper(),
                help=meta["help"] if default is None else f"{meta['help']} (default: {default})",
            )


def _scalar_type(f: dataclasses.Field):
    """float / int / str from the field's annotation ("float | None" -> float); a None default has no type."""
    name = str(f.type).split("|")[0].strip()
    return {"float": float, "int": int, "bool": bool}.get(name, str)


def _config(args: argparse.Namespace) -> RunConfig:
    cfg = RunConfig()
    for key, value in vars(args).items():
        if "." in key:
            section, name = key.split(".", 1)
            setattr(getattr(cfg, section), name, tuple(value) if isinstance(value, list) else value)
        elif key in {f.name for f in dataclasses.fields(RunConfig)}:
            setattr(cfg, key, value)
    return cfg


def cmd_run(args) -> int:
    from .configcheck import resume_changes
    from .runner import resume, run

    if args.resume:
        resume(args.resume, changes=resume_changes(args, vars(build_parser().parse_args(["run"]))))
    else:
        run(_config(args), train=True, overwrite=args.overwrite)
    return 0


def cmd_evaluate(args) -> int:
    from .distributed import is_main
    from .runner import run

    metrics = run(_config(args), train=False, overwrite=args.overwrite)
    if is_main():  # once under torchrun / accelerate launch
        print(json.dumps(metrics["before"], indent=2))
    return 0


def cmd_datasets(args) -> int:
    from .data import PAPER_DATASETS, list_datasets

    print(f"{'index':>5}  {'name':<22}{'calib/demo/test':<17}{'paper':<7}label words")
    for info in list_datasets():
        sizes = "/".join(str(n) for n in info.split_sizes)
        paper = "yes" if info.name in PAPER_DATASETS else ""
        print(f"{info.index:>5}  {info.name:<22}{sizes:<17}{paper:<7}{', '.join(info.label_words)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="abft", description="Attention Behavior Fine-Tuning for in-context learning.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="accuracy before, ABFT (or E2E) training, accuracy after, saved weights",
        description="Run the paper's protocol on one dataset.",
    )
    for name, cls in SECTIONS.items():
        _add_fields(run, cls, f"{name}.")
    _add_fields(run, RunConfig, "")
    run.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run (its own config is used)")
    run.set_defaults(func=cmd_run)

    ev = sub.add_parser(
        "evaluate",
        help="StaICC test protocol of an unchanged model",
        description="Evaluate in-context-learning accuracy (1024 StaICC test prompts).",
    )
    _add_fields(ev, ModelConfig, "model.")
    _add_fields(ev, DataConfig, "data.", skip={"train_samples"})
    _add_fields(ev, EvalConfig, "eval.", skip={"fore_test", "post_test"})
    _add_fields(ev, RunConfig, "", skip={"save"})
    ev.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    ev.set_defaults(func=cmd_evaluate)

    ds = sub.add_parser("datasets", help="list the bundled StaICC datasets")
    ds.set_defaults(func=cmd_datasets)

    from .report.commands import register  # report, heads, interpolate

    register(sub)
    from .sweep import register as register_sweep  # sweep

    register_sweep(sub)
    from .report.ceiling import register as register_ceiling  # ceiling

    register_ceiling(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        with sigterm_as_interrupt():  # a killed run records "interrupted" as on Ctrl-C
            return args.func(args)
    except UserError as exc:
        if args.debug:
            raise
        print("abft: error: " + " ".join(str(exc).splitlines()), file=sys.stderr)  # always one line
        return 2
    except KeyboardInterrupt as exc:
        print(f"abft: {exc or 'interrupted'}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
