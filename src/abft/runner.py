"""The paper's protocol as one function: accuracy before, training, accuracy after, saved weights.

metrics = run(RunConfig())          # what `abft run` and `make demo` do
metrics = run(cfg, train=False)     # what `abft evaluate` does
"""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from . import distributed
from .analysis.heads import head_statistics, heads_summary
from .analysis.setup import load_setup
from .analysis.snapshot import RunSnapshot
from .config import RunConfig, check_restricted_gradient
from .configcheck import checked_config
from .data import (
    PromptBuilder,
    dataset_stem,
    describe_splits,
    load_any,
    splits_summary,
    splits_warning,
    test_pairs,
    train_pairs,
    validation_pairs,
)
from .errors import Text, UserError, param
from .evaluation import evaluate_prompts, fore_cache, suites
from .evaluation import mauve as mauve_eval
from .evaluation.predictions import paired_change, prediction_records, read_jsonl, to_jsonl
from .evaluation.protocols import accuracy_se
from .evaluation.scoring import Scorer
from .models.context import check_context
from .models.lora import add_lora
from .models.weights import BaseWeights, save_trained
from .objectives import ABFTObjective
from .recipe import check as check_recipe
from .recipe import describe as describe_recipe
from .recipe import resolve as resolve_recipe
from .rundir import (
    CHECKPOINT_DIR,
    HEADS_FILE,
    LOG_FILE,
    METRICS_FILE,
    PREDICTIONS_FILE,
    TIMINGS_FILE,
    RunDir,
    atomic_write,
    default_output,
    open_run_dir,
)
from .signals import interrupted
from .train import StepRecord
from .train import train as train_model
from .validation import ValidationMonitor

HEAD_SAMPLE = 64  # training prompts used for heads.json
FULL_TEST = 1024  # StaICC's test prompts per dataset (512 queries x 2 demonstration sets)


def resume(run_dir: str | Path, log=print, changes: dict | None = None) -> dict:
    """Continue an interrupted `abft run` from its last checkpoint, with the configuration it was started with
    (checked like CLI input and against its fingerprint); `changes`: configcheck.RESUME_FLAGS, e.g. {"lr": 1e-5}."""
    distributed.init()
    config = distributed.broadcast_object(distributed.on_main(lambda: RunDir.resumable_config(run_dir)))
    cfg = checked_config(config)
    cfg.output = str(run_dir)
    for name, value in (changes or {}).items():
        log(f"resume: {name} {getattr(cfg.train, name)} -> {value}")
        setattr(cfg.train, name, value)
    return run(cfg, train=config.get("command", "run") == "run", resume_run=True, log=log)


def run(cfg: RunConfig, train: bool = True, overwrite: bool = False, log=print, resume_run: bool = False) -> dict:
    """Run the protocol and write the run directory; returns metrics.json's content (cfg.output: the directory).

    Everything a user can get wrong (dataset, model, sizes, prompt length) is checked before the run
    directory is created, so a mistake leaves nothing behind.
    Under torchrun / accelerate launch every process runs this; only the main one writes and logs.
    The HTML report is the caller's (abft.report.html.write_report; `abft run` writes it).
    """
    distributed.init()
    log = distributed.main_only(log)
    if train and cfg.model.quantized and not cfg.train.lora_r:
        cfg.train.lora_r = 16  # a 4-bit base is trained through an adapter; the paper's rank
        note = f"{param('quantized')} trains LoRA adapters; {param('lora_r')} was not given"
        log(Text(f"note: {note}, so the paper's rank 16 is used"))
    _validate(cfg, train)
    if cfg.model.fsdp and distributed.world_size() == 1:
        where = "over the processes of torchrun / accelerate launch; this is one process"
        log(Text(f"note: {param('fsdp')} shards the model {where}"))
    if not resume_run:
        cfg.output = str(
            cfg.output or default_output(dataset_stem(cfg.data.dataset), cfg.train.method if train else "eval")
        )
        distributed.on_main(lambda: RunDir.check_available(cfg.output, overwrite))  # the main process writes it
    torch.manual_seed(cfg.seed)
    log(f"run directory {cfg.output}; loading {cfg.model.model}")  # the first minutes can be a download or a GGUF
    t0 = time.perf_counter()
    job = _prepare(cfg, train)
    job.timings["load_seconds"] = round(time.perf_counter() - t0, 2)
    if resume_run:
        out = open_run_dir(lambda: RunDir.reopen(cfg.output))
    else:
        out = open_run_dir(lambda: RunDir.create(cfg.output, overwrite))
    try:
        metrics = _run(cfg, job, out, log)
        out.set_state("finished")
        out.release()
    except BaseException as exc:
        error = _write_error(exc, out.path) or interrupted(exc, out.path) or exc
        out.record_stop(error)  # failed, or interrupted (Ctrl-C, SIGTERM); temporaries removed, lock released
        if error is not exc:
            raise error from exc
        raise
    if not distributed.is_main():  # the others wrote into a scratch directory
        return metrics
    table = summary_table(metrics)
    if table:
        log(table)
    return metrics


@dataclasses.dataclass
class _Job:
    dataset: object
    model: object
    tokenizer: object
    builder: PromptBuilder
    test: list
    train: list | None
    timings: dict
    mauve: object = None  # evaluation.mauve.MauveTest with --mauve-test / --mauve-prefix
    base: BaseWeights | None = None  # W_Q/W_K before training, for MAUVE's features and the report's qk_shift
    sets: dict = dataclasses.field(default_factory=dict)  # the prompt sets of the selected protocols
    recipe: dict = dataclasses.field(default_factory=dict)  # what the recipe chose (recipe.resolve)
    validation: list | None = None  # validation prompts (demonstration split) scored during training
    splits: dict = dataclasses.field(default_factory=dict)  # data.describe_splits: sizes, distinct test queries


def _prepare(cfg: RunConfig, train: bool) -> _Job:
    dataset = load_any(cfg.data.dataset)
    pool = len(dataset.demonstration)
    if cfg.data.k > pool:  # StaICC would repeat demonstrations within a prompt; refuse instead
        raise UserError(
            f"{param('k', cfg.data.k)} is larger than the demonstration pool of '{dataset.info.name}' ({pool} rows); "
            f"lower {param('k')} or use a larger dataset"
        )
    fsdp = _fsdp(cfg)
    model, tokenizer, builder, _ = load_setup(cfg, dataset, fsdp)  # the dataset checked before the slow part
    if train and cfg.train.lora_r:  # before anything reads W_Q/W_K (the report's snapshot)
        add_lora(model, cfg.train.lora_r, cfg.train.lora_alpha, cfg.train.lora_dropout)
    if fsdp:
        distributed.shard_model(model)
    choices = resolve_recipe(cfg.train, model) if train else {}
    test = builder.build_pairs(dataset, test_pairs(dataset, cfg.data.k, cfg.data.test_samples))
    train_prompts = None
    if train:
        pairs = train_pairs(dataset, cfg.data.k, cfg.data.train_samples, cfg.seed)
        train_prompts = builder.build_pairs(dataset, pairs)
    validation = None
    if train and cfg.train.val_samples:
        validation = builder.build_pairs(dataset, validation_pairs(dataset, cfg.data.k, cfg.train.val_samples))
    if train_prompts:  # and the test prompt of the report's snapshot; the suites check the others
        check_context(model, [*train_prompts, *(validation or []), test[0]])
    sets = suites.check_suites(model, tokenizer, dataset, cfg, normal=(builder, test))  # built once per run
    base = BaseWeights(model) if train else None
    mauve = mauve_eval.prepare(model, tokenizer, dataset, cfg, base)
    splits = describe_splits(dataset, cfg.data.test_samples)
    return _Job(
        dataset, model, tokenizer, builder, test, train_prompts, {}, mauve, base, sets, choices, validation, splits
    )


def runtime(model) -> dict:
    """What this run actually ran on (config.json "runtime"; --device / --dtype may say "auto"): the device,
    the weights' dtype and the versions of abft, torch and transformers."""
    import transformers

    from . import __version__

    weights = next(model.parameters())
    dtype = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(weights.dtype)
    return {
        "device": str(weights.device),
        "dtype": dtype or str(weights.dtype).removeprefix("torch."),
        "abft": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def _fsdp(cfg: RunConfig) -> bool:
    """Whether to shard the model (--fsdp or an Accelerate FSDP config) over several processes."""
    return (cfg.model.fsdp or distributed.fsdp_requested()) and distributed.world_size() > 1


def _validate(cfg: RunConfig, train: bool) -> None:
    """The settings (RunConfig.validate), then what they ask of this machine and launch."""
    if _fsdp(cfg):
        refused = [("quantized", cfg.model.quantized), ("mauve_test", cfg.eval.mauve_test or cfg.eval.mauve_prefix)]
        for name, given in refused:
            if given:
                raise UserError(f"{param(name)} cannot be combined with {param('fsdp')} (a sharded model)")
        check_restricted_gradient(train and cfg.train.restricted_gradient, lora=False, sharded=True)
    if cfg.model.device:
        device = param("device", cfg.model.device)
        try:
            torch.device(cfg.model.device)
        except RuntimeError:
            raise UserError(f"unknown {param('device')} {cfg.model.device!r}; use cpu, cuda or cuda:N") from None
        if torch.device(cfg.model.device).type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"{device}: no CUDA GPU is available here; use {param('device', 'cpu')}")
    cfg.validate(train)
    if train:
        check_recipe(cfg.train)


def _run(cfg: RunConfig, job: _Job, out: RunDir, log) -> dict:
    train = job.train is not None
    previous = distributed.broadcast_object(out.read_json("config.json")) or {}  # resuming: keep its record
    choices = previous.get("recipe_choices") or job.recipe
    config = {**dataclasses.asdict(cfg), "command": "run" if train else "evaluate", "runtime": runtime(job.model)}
    config = {**config, "recipe_choices": choices} if train else config
    if not (previous and train):  # a resumed run's record is rewritten once its checkpoint is accepted (_train)
        out.write_config(config)
    log(splits_summary(job.splits))
    warning = splits_warning(job.splits)
    if warning:
        log(Text(f"warning: {warning.marked}"))
    if train:
        log(describe_recipe(choices, cfg.train))
    if cfg.data.test_samples < FULL_TEST:
        log(f"note: {len(job.test)} test prompts, fewer than StaICC's {FULL_TEST}: a quicker, noisier estimate")
    model, tokenizer, info = job.model, job.tokenizer, job.dataset.info
    metrics: dict = distributed.broadcast_object(out.read_json(METRICS_FILE)) or {  # resuming: main's
        "dataset": info.name,
        "model": cfg.model.model,
        "k": cfg.data.k,
        "label_words": list(info.label_words),
        "data_splits": job.splits,
    }
    timings = job.timings
    t0 = time.perf_counter()

    def evaluate(stage: str) -> np.ndarray | None:  # the normal test (metrics at the stage's top), the others
        cache = suites.ScoreCache()  # holds the normal test's label distributions afterwards
        result = suites.run_suites(
            model, tokenizer, job.dataset, cfg, sets=job.sets, cache=cache, stage=stage, log=log, timings=timings
        )
        metrics[stage] = result
        probs = _normal_probs(job, cache)
        _write_predictions(job, out, stage, probs)
        if job.mauve is not None:
            result["mauve"] = job.mauve.run(model, stage, out.path, log=log, timings=timings)
        out.write_json(METRICS_FILE, metrics)
        out.write_json(TIMINGS_FILE, timings)
        return probs

    if (cfg.eval.fore_test or not train) and "before" not in metrics:
        _fore_test(cfg, job, out, metrics, evaluate, log)
        out.write_json(METRICS_FILE, metrics)
    if train:
        _train(cfg, job, out, metrics, evaluate, log, config if previous else None)
    if "accuracy" in metrics.get("before", {}) and "accuracy" in metrics.get("after", {}):
        metrics["accuracy_gain"] = metrics["after"]["accuracy"] - metrics["before"]["accuracy"]
        metrics.pop("change", None)  # a resumed run's metrics.json is read back: never keep its change unchecked
        before, after = _read_predictions(out, "before"), _read_predictions(out, "after")
        change = paired_change(before, after) if before and after else None
        if change is not None:
            metrics["change"] = change
    if cfg.eval.generalization_test:
        table = suites.generalization_table(
            metrics.get("before", {}).get("generalization"), metrics.get("after", {}).get("generalization")
        )
        if table:
            metrics["generalization"] = table
            log(suites.format_generalization_table(table))
    timings["run_seconds"] = round(time.perf_counter() - t0, 2)
    out.write_json(METRICS_FILE, metrics)
    out.write_json("timings.json", timings)
    return metrics


def _train(cfg: RunConfig, job: _Job, out: RunDir, metrics: dict, evaluate, log, resumed_config=None) -> None:
    """Training and what comes with it: heads.json, the report's snapshot, the saved weights, the after test.
    `resumed_config`: a resumed run's config.json, written only once train() accepts its checkpoint, so a
    refused one leaves the record as it was."""
    model, pad = job.model, job.tokenizer.pad_token_id
    objective = ABFTObjective.from_config(cfg.train, len(job.builder.prefix_ids))
    sample = job.train[:HEAD_SAMPLE]
    heads_before = head_statistics(model, sample, pad, objective)
    snapshot = RunSnapshot(model, job.test[0], pad, job.tokenizer, objective, job.base)  # the report's attention
    t = time.perf_counter()

    def on_step(record: StepRecord) -> None:
        out.append_jsonl(LOG_FILE, record.as_dict())

    def on_resume(records: list[StepRecord]) -> None:  # the log restarts from the checkpoint's steps
        if resumed_config is not None:
            out.write_config(resumed_config)
        atomic_write(out.file(LOG_FILE), "".join(json.dumps(r.as_dict()) + "\n" for r in records))

    checkpoint = out.file(CHECKPOINT_DIR)
    monitor = _monitor(cfg, job, log)
    train_model(
        model,
        job.train,
        cfg.train,
        pad,
        job.builder.label_token_ids,
        prefix_tokens=len(job.builder.prefix_ids),
        seed=cfg.seed,
        on_step=on_step,
        on_resume=on_resume,
        checkpoint_dir=checkpoint,
        checkpoint_every=cfg.checkpoint_every,
        monitor=monitor,
    )
    job.timings["train_seconds"] = round(time.perf_counter() - t, 2)
    if monitor is not None:
        metrics["validation"] = monitor.summary()
        log(f"kept the weights of step {metrics['validation']['kept_step']} ({monitor.keep} on validation)")
    heads_after = head_statistics(model, sample, pad, objective)
    out.write_json(HEADS_FILE, {"before": heads_summary(heads_before), "after": heads_summary(heads_after)})
    snapshot.write(model, out.path)  # example_attention.json, qk_shift.json
    if cfg.save:  # delta.safetensors, or adapter/ (a peft adapter) with LoRA
        save_trained(model, out.path, meta={"model": cfg.model.model, "method": cfg.train.method})
    if cfg.eval.post_test:
        evaluate("after")
    shutil.rmtree(checkpoint, ignore_errors=True)


def _normal_probs(job: _Job, cache: suites.ScoreCache) -> np.ndarray | None:
    """The normal test's (N, C) label distributions from the stage's score cache (no second forward), or None
    when the normal test was not selected."""
    if "normal" not in job.sets or not job.test:  # (template 0 caches the first normal prompts: not a test)
        return None
    labels = job.builder.label_token_ids
    return Scorer(job.model, job.tokenizer.pad_token_id, cache=cache).probs(job.test, labels)


def _write_predictions(job: _Job, out: RunDir, stage: str, probs: np.ndarray | None) -> None:
    """predictions_<stage>.jsonl: the normal test's per-prompt outputs from its label distributions `probs`
    (None: not selected); after training each record says whether its prediction flipped (predictions_before's)."""
    if probs is None:
        return
    before = _read_predictions(out, "before") if stage != "before" else None
    records = prediction_records(probs, job.test, job.builder.label_words, before)
    atomic_write(out.file(PREDICTIONS_FILE.format(stage=stage)), to_jsonl(records))


def _read_predictions(out: RunDir, stage: str) -> list[dict] | None:
    """predictions_<stage>.jsonl read back (a resumed run's is from an earlier process and may have been
    edited): None unless every line is a record with an integer prediction and a boolean correct."""
    path = out.file(PREDICTIONS_FILE.format(stage=stage))
    try:
        records = read_jsonl(path.read_text()) if path.is_file() else None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: [[[[...]]]]
        return None
    fields = (("prediction", int), ("correct", bool))
    valid = records is not None and all(
        isinstance(r, dict) and all(type(r.get(k)) is t for k, t in fields) for r in records
    )
    return records if valid else None


def _monitor(cfg: RunConfig, job: _Job, log) -> ValidationMonitor | None:
    """The validation monitor of a training run with validation prompts (cfg.train.val_samples > 0)."""
    if not job.validation:
        return None
    labels, pad = job.builder.label_token_ids, job.tokenizer.pad_token_id
    classes, batch = len(job.dataset.info.label_words), cfg.eval.eval_batch_size

    def score(model) -> dict:
        return evaluate_prompts(model, job.validation, labels, pad, classes, batch, "validating")[0]

    return ValidationMonitor(score, cfg.train.val_every, cfg.train.keep, len(job.validation), log)


def summary_table(metrics: dict) -> str | None:
    """Accuracy before / after / change with the test-prompt count and 95% intervals (normal approximation;
    the change's from its paired standard error when both stages' per-prompt predictions exist, else from
    the two stages as independent samples, which overstates it)."""
    rows = [(stage, metrics[stage]) for stage in ("before", "after") if "accuracy" in metrics.get(stage, {})]
    if not rows:
        return None
    lines = [f"{'':8}{'accuracy':>10}{'95% interval':>20}{'test prompts':>14}"]
    se = {stage: accuracy_se(m["accuracy"], m["prompts"]) for stage, m in rows}
    for stage, m in rows:
        half = 1.96 * se[stage]
        interval = f"[{m['accuracy'] - half:.3f}, {m['accuracy'] + half:.3f}]"
        lines.append(f"{stage:8}{m['accuracy']:>10.4f}{interval:>20}{m['prompts']:>14}")
    if len(rows) == 2:
        (_, b), (_, a) = rows
        paired = metrics.get("change")
        change = a["accuracy"] - b["accuracy"]
        half = 1.96 * (paired["se"] if paired else math.hypot(se["before"], se["after"]))
        interval = f"[{change - half:+.3f}, {change + half:+.3f}]"
        flips = f"  {paired['improved']} prompts right now, {paired['worsened']} wrong now" if paired else ""
        lines.append(f"{'change':8}{change:>+10.4f}{interval:>20}{flips}")
    return "\n".join(lines)


def _fore_test(cfg: RunConfig, job: _Job, out: RunDir, metrics: dict, evaluate, log) -> None:
    """metrics["before"]: from the fore-test cache with --reuse-fore-test when it holds this run's, else tested."""
    if not cfg.eval.reuse_fore_test or job.mauve is not None:
        if cfg.eval.reuse_fore_test:
            why = "its before generations belong to this run"
            log(Text(f"note: {param('reuse_fore_test')} is not used with MAUVE ({why})"))
        evaluate("before")
        return
    key = fore_cache.fore_test_key(cfg, job.model, job.sets)
    cached = distributed.broadcast_object(distributed.on_main(lambda: _cached_fore_test(cfg, job, key, log)))
    if cached is not None:
        log(f"before: reused from the fore-test cache ({key})")
        suites.log_stage(cfg, cached.before, "before", log)
        metrics["before"] = cached.before
        _write_predictions(job, out, "before", cached.probs)
        job.timings["before_reused"] = key
        return
    probs = evaluate("before")
    distributed.on_main(lambda: fore_cache.store(key, metrics["before"], probs))


def _cached_fore_test(cfg: RunConfig, job: _Job, key: str, log) -> fore_cache.Entry | None:
    """The cache's entry for `key` if it fits this run; an entry that does not is ignored, with one line."""
    golds = [p.gold for p in job.test] if "normal" in job.sets else None
    try:
        return fore_cache.load(key, cfg, golds, len(job.builder.label_words))
    except fore_cache.BadEntry as exc:
        log(f"note: fore-test cache entry {key} ignored ({exc}); testing again")
        return None


_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


def _write_error(exc: BaseException, run_dir: Path) -> UserError | None:
    """A full disk or a directory that became unwritable during the run, as a UserError naming the fix."""
    if not isinstance(exc, OSError) or exc.errno not in _WRITE_ERRNOS:
        return None
    return UserError(
        f"cannot write {exc.filename or run_dir}: {exc.strerror}; free disk space (or fix the permissions), then "
        f"continue with `abft run --resume {run_dir}`"  # the one way to continue a run
    )
