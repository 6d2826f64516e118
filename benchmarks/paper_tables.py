"""The paper's tables, cell by cell, resumable across sessions and machines.

    python benchmarks/paper_tables.py                # run every missing cell, in priority order
    python benchmarks/paper_tables.py --list         # cells, done or not, and their commands
    python benchmarks/paper_tables.py --only t1-smollm2 --commit   # a subset; `git commit` each finished cell

Each cell is one ordinary `abft run` or `abft evaluate` command, except two kinds that reuse a Table 1 cell's
trained model (same dataset, method and seed), so that the tables describe one model and none is trained twice.
The cells of Tables 2-3 and unseen labels test it on every protocol: `abft export` merges the run's trained
weights, and `abft evaluate` tests the merged model and (once per dataset, `...-base`) the base model. The
ceiling cells run `abft ceiling` on the base model and on an ABFT run (`--delta`): what ABFT's own target
attention is worth, edited in, where ABFT falls short. A cell's small JSON lands in benchmarks/paper/<cell>.json
when it has finished (test-prompt count, accuracy and its standard error, macro-F1, recency copy rate, each
prompt's correctness where the run logged it (the report pairs cells on the same prompts), what the
recipe chose, the validation curve's kept step, wall time, the commands). A cell whose JSON exists is skipped;
an interrupted run directory (under --runs, default runs/paper) is resumed with `abft run --resume`, and a
training run another cell needs is run again when its directory is gone (same seed and settings: the same
weights). Run directories are scratch: only the committed JSON counts, so a later session continues from the
files.

Order: the most informative cells first: issue 13's check of the default recipe (four datasets on the
embedded model, SST-2 on Gemma-3-270M), calibration (cheap) and E2E on the same four, every protocol for
Tables 2-3 and unseen labels on the trained models of those, the other 4 datasets (the 8-dataset mean; each
ceiling right after its ABFT run), the first four's ceilings, the ablations, hate's ABFT kept by validation
macro-F1 (`--keep best-f1`), Gemma, seed 1.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from abft.evaluation.generalization import generalization_table
from abft.evaluation.predictions import read_jsonl
from abft.rundir import PREDICTIONS_FILE

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "paper"
ABFT = [sys.executable, "-m", "abft.cli"]
TEST = 256  # test prompts per cell (the first 256 of StaICC's 1024): what these 2 cores allow per session
EMBEDDED, GEMMA = "smollm2-135m", "gemma3-270m"
# `abft ceiling` on the recipe's 128 validation prompts: unedited, and ABFT's target attention edited into its
# filtered heads or every head; on the trained model "none" is then the kept step's validation accuracy
CEILING_ARGS = ("--samples", "128", "--edits", "none", "target")
PAPER_DATASETS = [
    "sst2",
    "rotten_tomatoes",
    "trec",
    "subjective",
    "financial_phrasebank",
    "sst5",
    "tweet_eval_emotion",
    "tweet_eval_hate",
]


@dataclass(frozen=True)
class Cell:
    id: str
    table: str
    model: str
    dataset: str
    args: tuple[str, ...] = ()
    verb: str = "run"  # or "evaluate" (the base model only), or "ceiling" (the base and the trained model)
    trained: Cell | None = None  # evaluate the model this training cell's run made (and `base`, the base model)
    base: Cell | None = None

    def command(self, run_dir: Path, model: str | None = None) -> list[str]:
        size = () if self.verb == "ceiling" else ("--test-samples", str(TEST))  # ceiling: validation prompts
        return [*ABFT, self.verb, "--model", model or self.model, "--dataset", self.dataset,
                *size, *self.args, "--output", str(run_dir)]  # fmt: skip


def cells() -> list[Cell]:
    """Every cell, in the order they are run: what decides a claim first."""
    short = {EMBEDDED: "smollm2", GEMMA: "gemma"}
    first4, rest = PAPER_DATASETS[:4], PAPER_DATASETS[4:]

    def t1(model, dataset, method, seed=0):  # Table 1: a run's `before` is vanilla ICL, shared by ABFT and E2E
        args = ("--reuse-fore-test", "--method", method, "--seed", str(seed))
        return Cell(f"t1-{short[model]}-{dataset}-{method}-s{seed}", "table1", model, dataset, args)

    def calibration(model, dataset):  # Table 1's contextual-calibration column: the base model only
        args = ("--calibration", "contextual")
        return Cell(f"t1-{short[model]}-{dataset}-calibration", "table1", model, dataset, args, verb="evaluate")

    def t23(dataset, method):  # Tables 2 and 3 and unseen labels: every protocol on Table 1's trained model
        protocols = ("--generalization-test", "--unseen-label-test", "--test-type", "normal", "template", "demo")
        base = Cell(f"t23-smollm2-{dataset}-base", "", EMBEDDED, dataset, ("--reuse-fore-test", *protocols), "evaluate")
        cell_id = f"t23-smollm2-{dataset}-{method}-s0"
        return Cell(
            cell_id,
            "table2,table3,unseen",
            EMBEDDED,
            dataset,
            protocols,
            "evaluate",
            trained=t1(EMBEDDED, dataset, method),
            base=base,
        )

    def ceiling(dataset):  # why ABFT falls short where it does: what its own target attention is worth, edited in
        return Cell(f"ceil-smollm2-{dataset}-abft-s0", "ceiling", EMBEDDED, dataset, CEILING_ARGS, "ceiling",
                    trained=t1(EMBEDDED, dataset, "abft"))  # fmt: skip

    ablations = {"no-pid": ("--adaptive-penalty", "none"), "no-filter": ("--no-head-filter",)}
    ablations |= {"a0": ("--wrong-label-penalty", "0"), "b0": ("--correct-label-reward", "0")}

    out = [t1(EMBEDDED, d, "abft") for d in first4] + [t1(GEMMA, "sst2", "abft")]  # issue 13's check
    out += [calibration(EMBEDDED, d) for d in first4]  # minutes each: Table 1's calibration column first
    out += [t1(EMBEDDED, d, "e2e") for d in first4]
    out += [t23(d, m) for d in first4 for m in ("abft", "e2e")]
    # the headline is a mean over all 8 datasets: its other 4 before the ablations
    out += [calibration(EMBEDDED, d) for d in rest]
    # each ceiling right after the ABFT run it reads: a later machine lacks that run and would train it again
    out += [c for d in rest for c in (t1(EMBEDDED, d, "abft"), ceiling(d), t1(EMBEDDED, d, "e2e"))]
    out += [ceiling(d) for d in first4]  # after the headline: one whose run is gone trains it again
    out += [
        Cell(f"abl-smollm2-{d}-{name}", "ablation", EMBEDDED, d, ("--reuse-fore-test", *args))
        for d in ("sst2", "rotten_tomatoes")
        for name, args in ablations.items()
    ]
    # the keep rule where accuracy and macro-F1 disagree (hate: the step of best validation accuracy answers
    # "normal" to nearly every prompt); not one of the paper's cells, one run
    keep_f1 = ("--reuse-fore-test", "--keep", "best-f1")
    out.append(Cell("keep-smollm2-tweet_eval_hate-f1", "keep", EMBEDDED, "tweet_eval_hate", keep_f1))
    # the second model's Table 1 mean (a headline claim) before the seeds' spread; its calibration first (cheap)
    out += [calibration(GEMMA, d) for d in first4]
    out += [t1(GEMMA, d, m) for d in first4 for m in ("abft", "e2e") if (d, m) != ("sst2", "abft")]
    out += [t1(EMBEDDED, d, m, seed=1) for d in PAPER_DATASETS for m in ("abft", "e2e")]
    return out


def _stage(block: dict) -> dict:
    """What a cell keeps of one stage's metrics (metrics.json "before" or "after")."""
    keys = ("accuracy", "accuracy_se", "macro_f1", "copies_last_label", "prompts")
    stage = {k: block[k] for k in keys if k in block}
    if "calibration" in block:
        calibration = block["calibration"]  # "calibrated": runs before --calibration took methods
        contextual = calibration.get("contextual") or calibration["calibrated"]
        stage["calibrated_accuracy"] = contextual["accuracy"]
        stage["calibrated_macro_f1"] = contextual["macro_f1"]
    for key in ("template", "demo", "unseen_label", "generalization"):  # Tables 2-3, unseen labels
        if key in block:
            stage[key] = block[key]
    return stage


def correct_bits(run_dir: Path, stage: str, block: dict) -> str | None:
    """The normal test's per-prompt correctness, "1"/"0" in prompt order, from the run's predictions_<stage>.jsonl:
    with it the report pairs two cells on the same prompts (a tighter error than treating them as independent).
    None when the file is absent (an older abft) or does not reproduce the stage's prompt count and accuracy."""
    try:
        records = read_jsonl((run_dir / PREDICTIONS_FILE.format(stage=stage)).read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    rows = [r for r in records if isinstance(r, dict) and isinstance(r.get("correct"), bool)]
    if len(rows) != len(records) or [r.get("index") for r in rows] != list(range(len(rows))):
        return None
    bits = "".join("1" if r["correct"] else "0" for r in rows)
    same = len(bits) == block.get("prompts", -1) > 0 and math.isclose(bits.count("1") / len(bits), block["accuracy"])
    return bits if same else None


def _read(run_dir: Path, name: str) -> dict:
    return json.loads((run_dir / name).read_text())


def summarize(cell: Cell, run_dir: Path, command: str, seconds: float, stages: dict | None = None) -> dict:
    """The cell's JSON from its finished run directory (a training run, or the base model's evaluation);
    `stages`: the before / after blocks when they come from elsewhere (a trained model's protocols)."""
    metrics, config = _read(run_dir, "metrics.json"), _read(run_dir, "config.json")
    stage = {s: _stage(block) for s, block in (stages or metrics).items() if s in ("before", "after")}
    for name, block in stage.items() if stages is None else ():  # the run's own normal test: per-prompt rows
        if bits := correct_bits(run_dir, name, block):
            block["correct"] = bits
    trained = cell.verb == "run" or cell.trained is not None
    validation = metrics.get("validation", {})
    return {
        "cell": cell.id,
        "table": cell.table,
        "model": cell.model,
        "dataset": cell.dataset,
        "method": config["train"]["method"] if trained else "base",
        "seed": config["seed"],
        "command": command,
        **stage,
        "train": {k: config["train"][k] for k in ("recipe", "lr", "val_samples", "val_every", "keep", "epochs")}
        if trained
        else None,
        "train_samples": config["data"]["train_samples"] if trained else 0,
        "recipe_choices": config.get("recipe_choices"),
        "validation": {k: validation[k] for k in ("prompts", "kept_step", "best_accuracy", "base_accuracy")}
        if validation
        else None,
        "in_vs_out_of_domain": generalization_table(
            stage.get("before", {}).get("generalization"), stage.get("after", {}).get("generalization")
        ),  # fmt: skip
        "change": metrics.get("change"),  # paired: accuracy, se, prompts right / wrong only after training
        "validation_curve": [  # [step, accuracy, macro-F1]; a run of an older abft has no macro-F1
            [r["step"], r["accuracy"]] + ([r["macro_f1"]] if "macro_f1" in r else [])
            for r in validation.get("curve", [])
        ],
        "trained_by": cell.trained.id if cell.trained else None,
        **_provenance(seconds),
    }


def _provenance(seconds: float) -> dict:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return {"wall_seconds": round(seconds), "date": time.strftime("%Y-%m-%d"), "abft_commit": commit.stdout.strip()}


def _shown(argv: list[str], **dirs: Path) -> str:
    """A command as the cell's JSON shows it: `abft ...`, with scratch directories named by role."""
    text = " ".join(["abft", *argv[len(ABFT) :]])
    for name, path in dirs.items():
        text = text.replace(str(path), name)
    return text


def _finished(run_dir: Path) -> bool:
    return (run_dir / "status.json").is_file() and _read(run_dir, "status.json").get("state") == "finished"


def _finish(cell: Cell, run_dir: Path) -> float:
    """Run (or resume) `cell`'s own command in `run_dir` unless that run has finished; the run's seconds."""
    if not _finished(run_dir):
        resumable = cell.verb == "run" and (run_dir / "config.json").is_file()
        _execute(
            cell, [*ABFT, "run", "--resume", str(run_dir)] if resumable else [*cell.command(run_dir), "--overwrite"]
        )
    return _read(run_dir, "timings.json")["run_seconds"]


def _execute(cell: Cell, argv: list[str]) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {cell.id}: {' '.join(argv[len(ABFT) - 1 :])}", flush=True)
    subprocess.run(argv, cwd=ROOT, check=True)


def _trained_protocols(cell: Cell, runs: Path) -> dict:
    """A Tables 2-3 cell: the base model's and the trained model's protocols, each one `abft evaluate`; the
    trained model is the merged export of the training cell's run (trained again when its directory is gone)."""
    source, base = runs / cell.trained.id, runs / cell.base.id
    after, model = runs / f"{cell.id}-trained", runs / f"{cell.id}-model"  # not the run of an older driver
    _finish(cell.trained, source)  # resumed, or trained again when its directory is gone
    seconds = _finish(cell.base, base)
    export = [*ABFT, "export", "--merged", str(model), str(source)]
    if not _finished(after):
        if not model.is_dir():  # export renames a complete model into place: present means whole
            _on_trained(cell, export, source)
        _execute(cell, [*cell.command(after, model=str(model)), "--overwrite"])
    shutil.rmtree(model, ignore_errors=True)  # ours, written above; 0.5 GB each
    seconds += _read(after, "timings.json")["run_seconds"]  # the evaluations' cost; the training's is its cell's
    steps = [
        _shown(export, MODEL=model, TRAINED_RUN=source),
        _shown(cell.command(after, model=str(model)), MODEL=model, RUN_DIR=after),
        _shown(cell.base.command(base), BASE_RUN=base),
    ]
    stages = {"before": _read(base, "metrics.json")["before"], "after": _read(after, "metrics.json")["before"]}
    return summarize(cell, source, " && ".join(steps), seconds, stages)


def ceiling_commands(cell: Cell, runs: Path) -> dict[str, list[str]]:
    """A ceiling cell's two `abft ceiling` commands: the base model's, and the training cell's run's."""
    trained = [*ABFT, "ceiling", "--delta", str(runs / cell.trained.id), *cell.args]
    return {
        "base": cell.command(runs / f"{cell.id}-base"),
        "trained": [*trained, "--output", str(runs / f"{cell.id}-trained")],
    }


def _ceilings(cell: Cell, runs: Path) -> dict:
    """A ceiling cell: `abft ceiling` on the base model and on the training cell's run (`--delta`; trained again
    when its directory is gone). wall_seconds: the ceiling runs of the invocation that finished the cell."""
    source, argv = runs / cell.trained.id, ceiling_commands(cell, runs)
    _finish(cell.trained, source)
    seconds = 0.0
    for part, command in argv.items():
        if not (Path(command[-1]) / "ceiling.json").is_file():  # written last, atomically: present means finished
            start = time.monotonic()
            if part == "trained":
                _on_trained(cell, command, source)
            else:
                _execute(cell, command)
            seconds += time.monotonic() - start
    parts = {part: _read(Path(command[-1]), "ceiling.json") for part, command in argv.items()}
    base, trained = (Path(argv[part][-1]) for part in ("base", "trained"))
    shown = [_shown(argv["base"], BASE_OUT=base), _shown(argv["trained"], TRAINED_RUN=source, TRAINED_OUT=trained)]
    return {
        "cell": cell.id,
        "table": cell.table,
        "model": cell.model,
        "dataset": cell.dataset,
        "method": "abft",
        "seed": 0,
        "command": " && ".join(shown),
        "prompts": parts["base"]["prompts"],
        **{part: ceiling["rows"] for part, ceiling in parts.items()},  # base / trained: one row per (edit, heads)
        "trained_by": cell.trained.id,
        **_provenance(seconds),
    }


def _on_trained(cell: Cell, argv: list[str], source: Path) -> None:
    """Run `argv`, which reads the training run `source` (export, ceiling --delta); a run it refuses (exit status 2:
    written by an older abft) is moved aside, not deleted, and trained again (same seed and settings)."""
    try:
        _execute(cell, argv)
    except subprocess.CalledProcessError as exc:
        if exc.returncode != 2:
            raise
        aside = source.with_name(f"{source.name}.refused-{time.strftime('%Y%m%d-%H%M%S')}")
        print(f"{source} moved aside to {aside.name}", flush=True)
        source.rename(aside)
        _execute(cell.trained, cell.trained.command(source))
        _execute(cell, argv)
        before = OUT / f"{cell.trained.id}.json"
        if before.is_file():  # the same weights as the cell's or not: say so
            then, now = _read(OUT, before.name)["after"]["accuracy"], _read(source, "metrics.json")["after"]["accuracy"]
            print(f"{cell.trained.id} trained again: test accuracy after {now:.4f} (its cell: {then:.4f})", flush=True)


def run_cell(cell: Cell, runs: Path, commit: bool) -> None:
    if cell.verb == "ceiling":
        summary = _ceilings(cell, runs)
    elif cell.trained:
        summary = _trained_protocols(cell, runs)
    else:
        run_dir = runs / cell.id
        seconds = _finish(cell, run_dir)
        summary = summarize(cell, run_dir, _shown(cell.command(run_dir), RUN_DIR=run_dir), seconds)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{cell.id}.json"
    path.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"[{time.strftime('%H:%M:%S')}] {cell.id}: wrote {path.relative_to(ROOT)}", flush=True)
    if commit:
        _commit(path, f"paper tables: {cell.id}")


def _commit(path: Path, message: str, tries: int = 5) -> None:
    """Commit only `path` (other staged work stays staged); retried while another git holds the index lock."""
    for _ in range(tries):
        added = subprocess.run(["git", "add", str(path)], cwd=ROOT)
        done = added.returncode == 0 and subprocess.run(
            ["git", "commit", "-q", "-m", message, "--", str(path)], cwd=ROOT
        )
        if done and done.returncode == 0:
            return
        time.sleep(10)
    print(f"warning: could not commit {path}; commit it by hand", flush=True)


def table(rows: list[dict]) -> str:
    """Markdown rows of finished training cells: accuracy +- standard error before / after, macro-F1, copying."""
    out = [
        "| cell | test prompts | accuracy before -> after (+- s.e.) | change | macro-F1 | copies last label "
        "| lr | kept step (val acc. base -> kept) | wall |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "after" not in r:
            continue
        b, a, v = r["before"], r["after"], r.get("validation") or {}
        kept = f"{v['kept_step']} ({v['base_accuracy']:.3f} -> {v['best_accuracy']:.3f})" if v else "last"
        out.append(
            f"| {r['cell']} | {a['prompts']} | {b['accuracy']:.3f} +- {b['accuracy_se']:.3f} -> "
            f"**{a['accuracy']:.3f}** +- {a['accuracy_se']:.3f} | {a['accuracy'] - b['accuracy']:+.3f} | "
            f"{b['macro_f1']:.3f} -> {a['macro_f1']:.3f} | {b['copies_last_label']:.2f} -> "
            f"{a['copies_last_label']:.2f} | {r['train']['lr']:g} | {kept} | {r['wall_seconds'] / 60:.1f} min |"
        )
    return "\n".join(out)


def _listed(cell: Cell) -> list[str]:
    model = f"MODEL(trained by {cell.trained.id})" if cell.trained else None
    return cell.command(Path("RUN_DIR"), model=model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run only cells whose id starts with this")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "paper", help="scratch run directories")
    parser.add_argument("--commit", action="store_true", help="git commit each cell's JSON as it lands")
    parser.add_argument("--list", action="store_true", help="list the cells and stop")
    parser.add_argument("--table", action="store_true", help="print the finished cells as a markdown table")
    args = parser.parse_args()
    if args.table:
        ids = [c.id for c in cells() if c.id.startswith(args.only)]
        rows = [json.loads((OUT / f"{i}.json").read_text()) for i in ids if (OUT / f"{i}.json").is_file()]
        print(table(rows))
        return
    todo = [c for c in cells() if c.id.startswith(args.only)]
    for cell in todo:
        done = (OUT / f"{cell.id}.json").is_file()
        if args.list:
            print(f"{'done' if done else 'todo':5} {cell.id:40} {' '.join(_listed(cell)[3:])}")
        elif not done:
            try:
                run_cell(cell, args.runs, args.commit)
            except subprocess.CalledProcessError as exc:  # one cell's failure (in its log above) stops no other
                print(f"[{time.strftime('%H:%M:%S')}] {cell.id}: failed (exit status {exc.returncode})", flush=True)


if __name__ == "__main__":
    main()
