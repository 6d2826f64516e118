"""The `abft report`, `abft heads` and `abft interpolate` subcommands (registered by abft.cli).

abft report runs/sst2-abft-X                     # report.html (+ figures/*.png) from the run's files, no model
abft report runs/sst2-abft-X --with-model        # first recompute example_attention.json and qk_shift.json
abft heads --dataset sst2 --k 4 --samples 64     # head discovery without training -> heads.json + PNGs
abft interpolate RUN_E2E RUN_ABFT --grid 5       # accuracy / NLL on θ0 + a ΔE2E + b ΔABFT -> JSON + contour
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

from ..config import RunConfig
from ..configcheck import checked_config
from ..errors import UserError
from ..limits import MAX_GRID, MAX_PROMPTS, check_at_most, check_seed
from ..rundir import RunDir, atomic_write
from .discovery import HeadsOptions


# ------------------------------------------------------------------------------------------------ report
def report_run(run_dir: str | Path, with_model: bool = False, log=print) -> Path:
    """Write report.html; with_model: recompute the model-dependent files from the base model + delta first."""
    run = Path(run_dir)
    if not run.is_dir():
        raise UserError(f"run directory {run} does not exist")
    if with_model:
        recompute_snapshot(run, log)
    from .html import write_report

    try:
        return write_report(run)
    except (TypeError, KeyError, ValueError, AttributeError, IndexError) as exc:  # edited files of another shape
        raise UserError(
            f"cannot write the report of {run}: its JSON files are not shaped as abft writes them "
            f"({type(exc).__name__}: {exc}); restore them or rerun"
        ) from exc


def read_config_json(run: str | Path) -> dict:
    """config.json of a run directory as written; a UserError when it is missing or unreadable."""
    path = Path(run) / "config.json"
    if not path.is_file():
        raise UserError(f"{run} is not an abft run directory (no config.json)")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from exc


def read_config(run: str | Path) -> RunConfig:
    """The RunConfig a run directory was started with: UserError when config.json is missing, invalid, or not
    the one its status.json fingerprint binds to the run (edited or replaced: its weights may not match it)."""
    return checked_config(RunDir(Path(run)).read_config(), str(Path(run) / "config.json"))


def load_setup(cfg: RunConfig):
    """(model, tokenizer, builder, dataset) of a configuration, as `abft run` builds them: the base model (4-bit
    with --quantized) and cfg's dataset with its PromptBuilder (default template, cfg's label-token mode)."""
    from ..data import PromptBuilder, default_template, load_any
    from ..models import load_model

    dataset = load_any(cfg.data.dataset)
    m = cfg.model
    model, tokenizer = load_model(m.model, m.device, m.dtype, m.quantized, m.trust_remote_code)
    info = dataset.info
    builder = PromptBuilder(tokenizer, info.label_words, default_template(info), cfg.data.label_token_mode)
    return model, tokenizer, builder, dataset


def output_dir(out: Path) -> Path:
    """Create the output directory `out` (a UserError naming it when that fails)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write to {out}: {exc.strerror}") from exc
    return out


def recompute_snapshot(run: Path, log=print) -> None:
    """example_attention.json and qk_shift.json from the base model and the run's trained weights."""
    from ..data import test_pairs
    from ..models.params import check_trained, load_delta
    from ..objectives import ABFTObjective
    from .snapshot import RunSnapshot

    check_trained(run)
    cfg = read_config(run)
    log(f"loading {cfg.model.model} and the first test prompt of {cfg.data.dataset}")
    model, tokenizer, builder, dataset = load_setup(cfg)
    prompt = builder.build_pairs(dataset, test_pairs(dataset, cfg.data.k, 1))[0]
    objective = ABFTObjective.from_config(cfg.train, len(builder.prefix_ids))
    snapshot = RunSnapshot(model, prompt, tokenizer.pad_token_id, tokenizer, objective)
    load_delta(model, run)
    snapshot.write(model, run)


# ------------------------------------------------------------------------------------------------- heads
def find_heads(cfg: RunConfig, opts: HeadsOptions, output: str | Path | None = None, log=print) -> dict:
    """`abft heads`: discover heads on `opts.samples` calibration prompts of cfg's dataset; writes the output."""
    from ..data import train_pairs
    from .discovery import discover_heads

    checks = [("--samples", opts.samples, 1), ("--induction-length", opts.induction_length, 2)]
    checks += [("--induction-sequences", opts.induction_sequences, 1), ("--batch-size", opts.batch_size, 1)]
    checks += [("--k", cfg.data.k, 1)]
    for flag, value, low in checks:
        if value < low:
            raise UserError(f"{flag} must be at least {low}, got {value}")
    check_at_most(
        [("--samples", opts.samples, MAX_PROMPTS), ("--induction-sequences", opts.induction_sequences, MAX_PROMPTS)]
    )
    check_seed(cfg.seed)
    for flag, value in (("--circuit-factor", opts.circuit_factor), ("--induction-threshold", opts.induction_threshold)):
        if not math.isfinite(value):
            raise UserError(f"{flag} must be a finite number, got {value}")
    if not 0 < opts.min_rate <= 1:
        raise UserError(f"--min-rate must lie in (0, 1], got {opts.min_rate}")
    out = Path(output or cfg.output or _default_heads_output(cfg))
    if (out / "heads.json").exists():
        raise UserError(f"{out} already holds a heads.json; pick another --output")
    model, tokenizer, builder, dataset = load_setup(cfg)
    prompts = builder.build_pairs(dataset, train_pairs(dataset, cfg.data.k, opts.samples, cfg.seed))
    log(f"{len(prompts)} calibration prompts of {dataset.info.name}, k={cfg.data.k}; {cfg.model.model}")
    result = discover_heads(
        model,
        prompts,
        tokenizer.pad_token_id,
        len(dataset.info.label_words),
        opts,
        seed=cfg.seed,
        prefix=builder.prefix_ids,
        exclude=tokenizer.all_special_ids,
        vocab_size=len(tokenizer),
    )
    result = {"model": cfg.model.model, "dataset": dataset.info.name, "k": cfg.data.k, "seed": cfg.seed, **result}
    write_heads(result, out)
    for name, section in (("ABFT filter", "abft_filter"), ("circuit threshold", "circuit_filter")):
        log(f"{name}: {result[section]['mean_heads_per_prompt']:.2f} heads per prompt")
    log(f"prefix matching: {sum(len(v) for v in result['prefix_matching']['induction_heads'].values())} heads")
    log(f"wrote {out / 'heads.json'}")
    return result


def write_heads(result: dict, out: Path) -> None:
    from .figures import label_heads_figure, prefix_matching_figure

    output_dir(out)
    atomic_write(out / "label_heads.png", label_heads_figure(result))
    atomic_write(out / "prefix_matching.png", prefix_matching_figure(result))
    atomic_write(out / "heads.json", json.dumps(result, indent=2) + "\n")


def _default_heads_output(cfg: RunConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"heads-{Path(cfg.model.model).stem}-{Path(cfg.data.dataset).stem}-{stamp}"


# ------------------------------------------------------------------------------------------- interpolate
SHARED = (("model", "model"), ("data", "dataset"), ("data", "k"), ("data", "label_token_mode"))


def check_pair(cfg_a: RunConfig, cfg_b: RunConfig, run_a: Path, run_b: Path) -> None:
    for section, name in SHARED:
        a, b = getattr(getattr(cfg_a, section), name), getattr(getattr(cfg_b, section), name)
        if a != b:
            flag = "--" + name.replace("_", "-")
            raise UserError(
                f"the runs differ in {flag} ({run_a.name}: {a!r}, {run_b.name}: {b!r}); interpolate runs of one base"
            )


def load_eval_job(cfg: RunConfig, test_samples: int):
    """(model, prompts, label_token_ids, pad_id, num_classes, dataset name): the first test prompts of a run."""
    from ..data import test_pairs

    model, tokenizer, builder, dataset = load_setup(cfg)
    prompts = builder.build_pairs(dataset, test_pairs(dataset, cfg.data.k, test_samples))
    info = dataset.info
    return model, prompts, builder.label_token_ids, tokenizer.pad_token_id, len(info.label_words), info.name


def interpolate_runs(
    run_a: str | Path,
    run_b: str | Path,
    grid: int = 5,
    span: tuple[float, float] = (0.0, 1.0),
    test_samples: int = 128,
    output: str | Path | None = None,
    batch_size: int = 16,
    loader: Callable = load_eval_job,
    log=print,
) -> dict:
    """`abft interpolate`: the grid, interpolation.json and interpolation.png in `output`."""
    import numpy as np

    from ..models.params import BaseWeights, check_trained
    from .figures import interpolation_figure
    from .interpolation import interpolation_grid, run_weights

    run_a, run_b = Path(run_a), Path(run_b)
    cfg_a, cfg_b = read_config(run_a), read_config(run_b)
    check_pair(cfg_a, cfg_b, run_a, run_b)
    if grid < 2:
        raise UserError(f"--grid must be at least 2, got {grid}")
    if test_samples < 1 or batch_size < 1:
        flag, value = ("--test-samples", test_samples) if test_samples < 1 else ("--eval-batch-size", batch_size)
        raise UserError(f"{flag} must be at least 1, got {value}")
    check_at_most([("--grid", grid, MAX_GRID), ("--test-samples", test_samples, MAX_PROMPTS)])
    if not -math.inf < span[0] < span[1] < math.inf:
        raise UserError(f"--range needs finite LOW < HIGH, got {span[0]} {span[1]}")
    check_trained(run_a)
    check_trained(run_b)
    out = Path(output) if output else run_b.parent / f"interpolate-{run_a.name}-{run_b.name}"
    if (out / "interpolation.json").exists():
        raise UserError(f"{out} already holds an interpolation.json; pick another --output")
    coords = np.linspace(span[0], span[1], grid).tolist()
    model, prompts, label_ids, pad, num_classes, dataset = loader(cfg_a, test_samples)
    base = BaseWeights(model)
    theta_a, theta_b = run_weights(model, run_a, base), run_weights(model, run_b, base)
    log(f"{grid}x{grid} grid on {len(prompts)} test prompts of {dataset}")
    result = interpolation_grid(
        model, prompts, label_ids, pad, num_classes, theta_a, theta_b, coords, batch_size, log, base=base
    )
    labels = {}
    for key, run, cfg in (("a", run_a, cfg_a), ("b", run_b, cfg_b)):
        labels[key] = {"path": str(run), "method": cfg.train.method, "label": f"{cfg.train.method} ({run.name})"}
    result = {"model": cfg_a.model.model, "dataset": dataset, "k": cfg_a.data.k, "runs": labels, **result}
    output_dir(out)
    atomic_write(out / "interpolation.png", interpolation_figure(result))
    atomic_write(out / "interpolation.json", json.dumps(result, indent=2) + "\n")
    log(f"wrote {out / 'interpolation.json'}")
    return result


# ---------------------------------------------------------------------------------------------------- CLI
HEADS_FLAGS = (
    ("--samples", int, "calibration prompts"),
    ("--min-rate", float, "list heads that pass on at least this share of the prompts"),
    ("--circuit-factor", float, "c of the circuit threshold c/n_t"),
    ("--induction-length", int, "random tokens per copy in the prefix-matching test"),
    ("--induction-sequences", int, "repeated random sequences"),
    ("--induction-threshold", float, "list heads whose prefix-matching score exceeds this"),
    ("--log-base", str, "log base of ABFT's threshold k/(k + log n_t)"),
    ("--batch-size", int, "prompts per forward"),
)


def add_model_and_data_flags(parser) -> None:
    """The model and prompt flags of an analysis command (one process, one whole model: no --fsdp; no
    training or test sizes)."""
    from ..cli import _add_fields
    from ..config import DataConfig, ModelConfig

    _add_fields(parser, ModelConfig, "model.", skip={"fsdp"})
    _add_fields(parser, DataConfig, "data.", skip={"train_samples", "test_samples"})


def register(sub) -> None:
    """Add the three subcommands to abft.cli's subparsers."""
    from ..cli import _add_fields

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
    rep.set_defaults(func=cmd_report)

    heads = sub.add_parser(
        "heads",
        help="head discovery without training: label-attention heads and prefix-matching induction heads",
        description="Per (layer, head): label-attention magnitude and correctness on calibration prompts "
        "(ABFT's filter and the circuit threshold), and the induction score on repeated random tokens.",
    )
    add_model_and_data_flags(heads)
    _add_fields(heads, RunConfig, "", skip={"save", "output"})
    group = heads.add_argument_group("heads")
    defaults = HeadsOptions()
    for flag, kind, text in HEADS_FLAGS:
        default = getattr(defaults, flag[2:].replace("-", "_"))
        choices = ["e", "2", "10"] if flag == "--log-base" else None
        group.add_argument(flag, type=kind, default=default, choices=choices, help=f"{text} (default: {default})")
    group.add_argument("--output", default=None, help="output directory (default: runs/heads-<model>-<dataset>-<time>)")
    heads.set_defaults(func=cmd_heads)

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
        type=float,
        nargs=2,
        default=(0.0, 1.0),
        metavar=("LOW", "HIGH"),
        help="a and b from LOW to HIGH (default: 0 1)",
    )
    inter.add_argument("--test-samples", type=int, default=128, help="first N StaICC test prompts (default: 128)")
    inter.add_argument("--eval-batch-size", type=int, default=16, help="prompts per scoring pass (default: 16)")
    inter.add_argument("--output", default=None, help="output directory (default: next to RUN_ABFT)")
    inter.set_defaults(func=cmd_interpolate)


def cmd_report(args: argparse.Namespace) -> int:
    print(report_run(args.run_dir, args.with_model))
    return 0


def cmd_heads(args: argparse.Namespace) -> int:
    from ..cli import _config

    opts = HeadsOptions(**{f: getattr(args, f) for f in HeadsOptions.__dataclass_fields__})
    find_heads(_config(args), opts)
    return 0


def cmd_interpolate(args: argparse.Namespace) -> int:
    interpolate_runs(
        args.run_e2e, args.run_abft, args.grid, tuple(args.range), args.test_samples, args.output, args.eval_batch_size
    )
    return 0
