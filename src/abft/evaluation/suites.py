"""The protocols a run evaluates at each stage (before / after training), keyed as in metrics.json.

    sets = check_suites(model, tok, ds, cfg, normal=(builder, test))  # once, before the run directory exists
    stage = run_suites(model, tok, ds, cfg, sets=sets, stage="before")  # that stage's metrics.json entry

SUITES is the one table of protocols: key -> Suite(prompt sets (prompt_sets.py), run (protocols.py), whether
cfg selects it, log line). normal (--test-type normal), template and demo (--test-type), generalization,
unseen_label, bias and calibration (their flags) run in that order. The prompts do not depend on the
weights, so check_suites builds them once per run (reusing the runner's test prompts; a UserError for a
label word that does not tokenise, an impossible sampler or a prompt longer than the model's context) and
every stage scores the same sets. A ScoreCache shared by the protocols of one stage scores each distinct
prompt once: the normal test prompts reappear in the template, generalization, unseen-label, bias and
calibration protocols. The protocol functions are re-exported here (suites.bias, ...).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from abft.data import Dataset
from abft.models.context import check_context

from .generalization import format_generalization_table, generalization_table
from .prompt_sets import (
    PromptSet,
    PromptSets,
    bias_sets,
    calibration_sets,
    demo_sets,
    generalization_sets,
    normal_sets,
    template_sets,
    unseen_sets,
)
from .protocols import (
    bias,
    calibration,
    demo_consistency,
    generalization,
    normal_test,
    template_consistency,
    unseen_label,
)
from .scoring import ScoreCache

__all__ = [
    "SUITES",
    "ScoreCache",
    "bias",
    "build_sets",
    "check_suites",
    "calibration",
    "demo_consistency",
    "format_generalization_table",
    "generalization",
    "generalization_table",
    "normal_test",
    "run_suites",
    "selected",
    "template_consistency",
    "unseen_label",
]


# ---------------------------------------------------------------------------------------- log lines
def _ratio(x: float | None, none: str) -> str:
    return none if x is None else f"{x:.4f}"


def _consistency_line(what: str, r: dict, accuracy: str, per: str) -> str:
    return (
        f"{what} consistency {r['consistency']:.4f}  {accuracy.replace('_', ' ')} {r[accuracy]:.4f}  "
        f"({r['queries']} queries x {per})"
    )


def _bias_line(r: dict) -> str:
    line = (
        f"contextual bias {r['contextual_bias']:.4f}  domain bias {r['domain_bias']:.4f}  "
        f"posterior bias {_ratio(r['posterior_bias'], 'inf')}  (max {r['max_entropy']:.4f})"
    )
    if r["label_noise"]:
        line += f"  label-noise accuracy slope {r['label_noise']['slope']['accuracy']:.4f}"
    return line


def _calibration_line(r: dict) -> str:
    methods = [key for key in r if key not in ("uncalibrated", "setup")]
    parts = [f"{key} {_ratio(r[key] and r[key]['accuracy'], 'n/a')}" for key in methods]
    return f"calibrated accuracy: {'  '.join(parts)}  (uncalibrated {r['uncalibrated']['accuracy']:.4f})"


# ---------------------------------------------------------------------------------------- the table
@dataclasses.dataclass(frozen=True)
class Suite:
    """One protocol: its prompt sets, how it runs on them, whether cfg selects it, and its log line."""

    sets: Callable[[PromptSets, Dataset], dict]  # -> {set name: PromptSet}
    run: Callable[..., dict]  # (model, tokenizer, dataset, cfg, *, cache, sets) -> result
    enabled: Callable[[object], bool]  # cfg -> selected?
    summary: Callable[[dict], str]  # result -> one log line
    timing: str = ""  # timings.json key f"{stage}_{timing or key}_seconds"
    top_level: bool = False  # metrics.json: the result's keys go to the stage itself, not under the key


SUITES: dict[str, Suite] = {  # in run order
    "normal": Suite(
        normal_sets,
        normal_test,
        lambda cfg: "normal" in cfg.eval.test_type,
        lambda r: (
            f"accuracy {r['accuracy']:.4f}  macro-F1 {r['macro_f1']:.4f}  "
            f"copies last label {r['copies_last_label']:.3f}  ({r['prompts']} prompts)"
        ),
        timing="test",
        top_level=True,
    ),
    "template": Suite(
        template_sets,
        template_consistency,
        lambda cfg: "template" in cfg.eval.test_type,
        lambda r: _consistency_line("template", r, "mean_accuracy", f"{len(r['templates'])} templates"),
    ),
    "demo": Suite(
        demo_sets,
        demo_consistency,
        lambda cfg: "demo" in cfg.eval.test_type,
        lambda r: _consistency_line("demonstration", r, "accuracy", f"{r['sets']} sets"),
    ),
    "generalization": Suite(
        generalization_sets,
        generalization,
        lambda cfg: cfg.eval.generalization_test,
        lambda r: (
            f"in-domain accuracy {r['in_domain_accuracy']:.4f}  out-of-domain "
            f"{_ratio(r['out_of_domain_accuracy'], 'n/a')}  ({len(r['datasets'])} datasets)"
        ),
    ),
    "unseen_label": Suite(
        unseen_sets,
        unseen_label,
        lambda cfg: cfg.eval.unseen_label_test,
        lambda r: (
            f"unseen-label accuracy {r['unseen_label']['accuracy']:.4f}  normal {r['normal']['accuracy']:.4f}  "
            f"0-shot {r['zero_shot']['accuracy']:.4f}"
        ),
    ),
    "bias": Suite(bias_sets, bias, lambda cfg: cfg.eval.bias_test, _bias_line),
    "calibration": Suite(calibration_sets, calibration, lambda cfg: bool(cfg.eval.calibration), _calibration_line),
}


def selected(cfg) -> list[str]:
    """SUITES keys of the protocols `cfg.eval` asks for, in run order."""
    return [key for key, suite in SUITES.items() if suite.enabled(cfg)]


def build_sets(tokenizer, dataset: Dataset, cfg, normal: tuple | None = None) -> dict[str, dict[str, PromptSet]]:
    """{key: {set name: PromptSet}} of the selected protocols, each distinct set built once. `normal`:
    (builder, prompts) of the test prompts when the caller has them already (the runner)."""
    sets = PromptSets(tokenizer, cfg)
    if normal is not None:
        sets.use_normal(dataset, *normal)
    return {key: SUITES[key].sets(sets, dataset) for key in selected(cfg)}


def check_suites(model, tokenizer, dataset: Dataset, cfg, normal: tuple | None = None) -> dict:
    """build_sets, so that a label word that does not tokenise, an impossible sampler or a prompt longer than
    the model's context fails before a run starts (UserError); returns the sets for run_suites."""
    built = build_sets(tokenizer, dataset, cfg, normal)
    for key, sets in built.items():
        for name, s in sets.items():
            check_context(model, s.prompts, f"a {key} prompt" + (f" ({name})" if name != key else ""))
    return built


def run_suites(
    model,
    tokenizer,
    dataset: Dataset,
    cfg,
    *,
    sets: dict | None = None,
    cache: ScoreCache | None = None,
    stage: str = "",
    log=print,
    timings: dict | None = None,
) -> dict:
    """Run the protocols cfg.eval selects on `sets` (from check_suites; built now if None) and return the
    stage's metrics.json entry: the normal test's metrics at the top, every other result under its key.
    Seconds per protocol go to timings[f"{stage}_{key}_seconds"] (the normal test: f"{stage}_test_seconds")."""
    cache = ScoreCache() if cache is None else cache
    sets = build_sets(tokenizer, dataset, cfg) if sets is None else sets
    out: dict = {}
    for key in selected(cfg):
        suite, t = SUITES[key], time.perf_counter()
        result = suite.run(model, tokenizer, dataset, cfg, cache=cache, sets=sets.get(key))
        if suite.top_level:
            out.update(result)
        else:
            out[key] = result
        if timings is not None:
            timings[f"{stage}_{suite.timing or key}_seconds"] = round(time.perf_counter() - t, 2)
        log(f"{stage:>6}: {suite.summary(result)}")
    return out


def stage_lines(cfg, result: dict) -> list[str]:
    """run_suites' summary lines of a stage's metrics.json entry `result` (KeyError, TypeError, ... when it
    lacks a selected protocol's fields: the fore-test cache checks its entries with this)."""
    return [SUITES[key].summary(result if SUITES[key].top_level else result[key]) for key in selected(cfg)]


def log_stage(cfg, result: dict, stage: str, log=print) -> None:
    """run_suites' log lines of a stage's metrics.json entry `result` (e.g. one from the fore-test cache)."""
    for line in stage_lines(cfg, result):
        log(f"{stage:>6}: {line}")
