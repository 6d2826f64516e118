"""`abft report`, `export`, `heads`, `interpolate` and `ceiling`: parsers over abft.analysis, export and report.

abft report runs/sst2-abft-X                     # report.html (+ figures/*.png) from the run's files, no model
abft report runs/sst2-abft-X --with-model        # first recompute example_attention.json and qk_shift.json
abft export runs/sst2-abft-X --merged my-model   # base + trained W_Q/W_K as a plain transformers model + card
abft heads --dataset sst2 --k 4 --samples 64     # head discovery without training -> heads.json + PNGs
abft interpolate RUN_E2E RUN_ABFT --grid 5       # accuracy / NLL on θ0 + a ΔE2E + b ΔABFT -> JSON + contour
abft ceiling --dataset sst2 --delta RUN_DIR      # accuracy with the last row's attention edited
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..config import DataConfig, ModelConfig, RunConfig, TrainConfig
from .flags import add_fields, config_from_args

HEADS_FLAGS = (
    ("--samples", int, "calibration prompts"),
    ("--min-rate", float, "list heads that pass on at least this share of the prompts"),
    ("--circuit-factor", float, "c of the circuit threshold c/n_t"),
    ("--induction-length", int, "random tokens per copy in the prefix-matching test"),
    ("--induction-sequences", int, "repeated random sequences"),
    ("--induction-threshold", float, "list heads whose prefix-matching score exceeds this"),
    ("--log-base", str, "log base of ABFT's threshold k/(k + log n_t)"),
)


def add_model_and_data_flags(parser) -> None:
    """The model and prompt flags of an analysis command (one process, one whole model: no --fsdp; no
    training or test sizes)."""
    add_fields(parser, ModelConfig, "model.", skip={"fsdp"})
    add_fields(parser, DataConfig, "data.", skip={"train_samples", "test_samples"})


def add_eval_batch_size(group, default: int) -> None:
    """--eval-batch-size, as `abft run` and `interpolate` name the prompts of one gradient-free forward
    (dest batch_size: the analysis functions' parameter); --batch-size, its old name, still works unlisted."""
    text = f"prompts per forward pass (memory vs speed) (default: {default})"
    group.add_argument(
        "--eval-batch-size", dest="batch_size", metavar="EVAL_BATCH_SIZE", type=int, default=default, help=text
    )
    group.add_argument("--batch-size", dest="batch_size", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def register(sub) -> None:
    """report, heads and interpolate."""
    from ..analysis.options import HeadsOptions

    rep = sub.add_parser(
        "report",
        help="self-contained report.html (figures, metrics, config) of a run directory",
        description="Write RUN_DIR/report.html and RUN_DIR/figures/*.png from the run's files.",
    )
    rep.add_argument("run_dir", metavar="RUN_DIR")
    rep.add_argument(
        "--with-model",
        action="store_true",
        help="load the base model and delta.safetensors to recompute example_attention.json and qk_shift.json "
        "(`abft run` writes them itself; use this for runs made without them)",
    )
    rep.set_defaults(func=cmd_report, parser=rep)

    export = sub.add_parser(
        "export",
        help="a finished run as a model directory that transformers loads without abft, with a model card",
        description="Merge RUN_DIR's trained W_Q/W_K (or LoRA adapter) into its base model and write OUT: "
        "config.json, model.safetensors, the tokenizer and README.md (a model card with the run's numbers).",
    )
    export.add_argument("run_dir", metavar="RUN_DIR", help="a finished run directory (delta.safetensors or adapter/)")
    export.add_argument(
        "--merged", metavar="OUT", required=True, help="new (or empty) directory for the merged model and its card"
    )
    export.set_defaults(func=cmd_export, parser=export)

    heads = sub.add_parser(
        "heads",
        help="head discovery without training: label-attention heads and prefix-matching induction heads",
        description="Per (layer, head): label-attention magnitude and correctness on calibration prompts "
        "(ABFT's filter and the circuit threshold), and the induction score on repeated random tokens.",
    )
    add_model_and_data_flags(heads)  # and only heads' own settings: it trains nothing
    group = heads.add_argument_group("heads")
    defaults = HeadsOptions()
    for flag, kind, text in HEADS_FLAGS:
        default = getattr(defaults, flag[2:].replace("-", "_"))
        choices = ["e", "2", "10"] if flag == "--log-base" else None
        group.add_argument(flag, type=kind, default=default, choices=choices, help=f"{text} (default: {default})")
    seed = RunConfig().seed
    group.add_argument(
        "--seed", type=int, default=seed, help=f"seed of the calibration prompts and random sequences (default: {seed})"
    )
    add_eval_batch_size(group, defaults.batch_size)
    group.add_argument("--output", default=None, help="output directory (default: runs/heads-<model>-<dataset>-<time>)")
    heads.set_defaults(func=cmd_heads, parser=heads)

    inter = sub.add_parser(
        "interpolate",
        help="accuracy and loss on θ0 + a(θ_E2E - θ0) + b(θ_ABFT - θ0): linear mode connectivity",
        description="Evaluate the plane through the base model and two runs' trained W_Q/W_K (same model, dataset, k).",
    )
    inter.add_argument("run_e2e", metavar="RUN_E2E", help="first run directory (axis a)")
    inter.add_argument("run_abft", metavar="RUN_ABFT", help="second run directory (axis b)")
    inter.add_argument("--grid", type=int, default=5, help="points per axis (default: 5)")
    inter.add_argument(
        "--range",
        dest="span",  # interpolate_runs' parameter, so its errors name this flag
        type=float,
        nargs=2,
        default=(0.0, 1.0),
        metavar=("LOW", "HIGH"),
        help="a and b from LOW to HIGH (default: 0 1)",
    )
    inter.add_argument("--test-samples", type=int, default=128, help="first N StaICC test prompts (default: 128)")
    add_eval_batch_size(inter, 16)
    inter.add_argument("--output", default=None, help="output directory (default: next to RUN_ABFT)")
    inter.set_defaults(func=cmd_interpolate, parser=inter)


def register_ceiling(sub) -> None:
    from ..analysis.options import EDITS, HEAD_SETS

    parser = sub.add_parser(
        "ceiling",
        help="accuracy with the last token's attention edited toward ABFT's target: what ABFT could buy",
        description="Score validation prompts (demonstration split) with the last token's attention on "
        "demonstration labels edited in ABFT's induction heads or in every head.",
    )
    add_model_and_data_flags(parser)
    kept = {"head_filter", "log_base", "count_bos"}  # the filter that selects the heads to edit
    add_fields(parser, TrainConfig, "train.", skip={f.name for f in dataclasses.fields(TrainConfig)} - kept)
    group = parser.add_argument_group("ceiling")
    group.add_argument("--samples", type=int, default=256, help="validation prompts (default: 256)")
    group.add_argument("--edits", nargs="+", choices=EDITS, default=list(EDITS), help="edits to score (default: all)")
    group.add_argument(
        "--heads", nargs="+", choices=HEAD_SETS, default=list(HEAD_SETS), help="head sets to edit (default: both)"
    )
    group.add_argument(
        "--delta",
        metavar="RUN_DIR",
        help="apply a run's trained W_Q/W_K (or adapter) first; the run's model, dataset, k, label-token mode "
        "and filter settings replace those flags",
    )
    add_eval_batch_size(group, 16)
    group.add_argument("--output", default=None, help="output directory (default: runs/ceiling-<dataset>-<time>)")
    parser.set_defaults(func=cmd_ceiling, parser=parser)


def cmd_report(args: argparse.Namespace) -> int:
    from ..report.html import report_run

    if args.with_model and Path(args.run_dir).is_dir():  # report_run names a missing directory
        from ..analysis.snapshot import recompute_snapshot

        recompute_snapshot(Path(args.run_dir))
    print(report_run(args.run_dir))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..export import export_merged

    print(export_merged(args.run_dir, args.merged))
    return 0


def cmd_heads(args: argparse.Namespace) -> int:
    from ..analysis.heads import HeadsOptions, find_heads

    opts = HeadsOptions(**{f: getattr(args, f) for f in HeadsOptions.__dataclass_fields__})
    find_heads(config_from_args(args), opts)
    return 0


def cmd_interpolate(args: argparse.Namespace) -> int:
    from ..analysis.interpolation import interpolate_runs

    interpolate_runs(
        args.run_e2e, args.run_abft, args.grid, tuple(args.span), args.test_samples, args.output, args.batch_size
    )
    return 0


def cmd_ceiling(args: argparse.Namespace) -> int:
    from ..analysis.ceiling import attention_ceiling

    cfg = config_from_args(args)
    attention_ceiling(cfg, args.samples, args.edits, args.heads, args.delta, args.output, args.batch_size)
    return 0
