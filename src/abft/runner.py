"""The paper's protocol as one function: accuracy before, training, accuracy after, saved weights.

metrics = run(RunConfig())          # what `abft run` and `make demo` do
metrics = run(cfg, train=False)     # what `abft evaluate` does
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from .config import RunConfig
from .data import PromptBuilder, default_template, load_dataset, test_pairs, train_pairs
from .errors import UserError
from .evaluation import evaluate_prompts
from .heads import head_statistics, heads_summary
from .models import load_model
from .models.params import find_qk_slices, save_delta
from .objectives import ABFTObjective
from .rundir import RunDir
from .train import StepRecord
from .train import train as train_model

HEAD_SAMPLE = 64  # training prompts used for heads.json


def default_output(cfg: RunConfig, train: bool) -> Path:
    what = cfg.train.method if train else "eval"
    name = Path(cfg.data.dataset).stem
    return Path("runs") / f"{name}-{what}-{time.strftime('%Y%m%d-%H%M%S')}"


def build_prompts(builder, dataset, pairs) -> list:
    rows = dataset.rows
    return [builder.build([rows[i] for i in demos], rows[q]) for demos, q in pairs]


def load_data(spec: str):
    path = Path(spec)
    if path.suffix.lower() in {".csv", ".jsonl", ".json", ".yaml", ".yml"}:
        from .data import load_user_dataset

        return load_user_dataset(path)
    return load_dataset(spec)


def run(cfg: RunConfig, train: bool = True, overwrite: bool = False, log=print) -> dict:
    """Run the protocol and write the run directory; returns metrics.json's content.

    Everything a user can get wrong (dataset, model, sizes, prompt length) is checked before the run
    directory is created, so a mistake leaves nothing behind.
    """
    _validate(cfg, train)
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    job = _prepare(cfg, train)
    job.timings["load_seconds"] = round(time.perf_counter() - t0, 2)
    out = RunDir.create(cfg.output or default_output(cfg, train), overwrite)
    try:
        metrics = _run(cfg, job, out, log)
    except BaseException as exc:
        out.set_state("failed", error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise
    out.set_state("finished")
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


def _prepare(cfg: RunConfig, train: bool) -> _Job:
    dataset = load_data(cfg.data.dataset)
    model, tokenizer = load_model(cfg.model.model, cfg.model.device, cfg.model.dtype)
    info = dataset.info
    builder = PromptBuilder(tokenizer, info.label_words, default_template(info), cfg.data.label_token_mode)
    test = build_prompts(builder, dataset, test_pairs(dataset, cfg.data.k, cfg.data.test_samples))
    train_prompts = None
    if train:
        pairs = train_pairs(dataset, cfg.data.k, cfg.data.train_samples, cfg.seed)
        train_prompts = build_prompts(builder, dataset, pairs)
    for prompts in (test, train_prompts or []):
        _check_context(model, prompts)
    return _Job(dataset, model, tokenizer, builder, test, train_prompts, {})


def _validate(cfg: RunConfig, train: bool) -> None:
    checks = [
        ("--k", cfg.data.k, 0),
        ("--test-samples", cfg.data.test_samples, 1),
        ("--eval-batch-size", cfg.eval.eval_batch_size, 1),
    ]
    if train:
        checks += [
            ("--train-samples", cfg.data.train_samples, 1),
            ("--pseudo-batch-size", cfg.train.pseudo_batch_size, 1),
            ("--micro-batch-size", cfg.train.micro_batch_size, 1),
            ("--epochs", cfg.train.epochs, 1),
        ]
        if not cfg.train.lr > 0:
            raise UserError(f"--lr must be positive, got {cfg.train.lr}")
    for flag, value, low in checks:
        if value < low:
            raise UserError(f"{flag} must be at least {low}, got {value}")


def _run(cfg: RunConfig, job: _Job, out: RunDir, log) -> dict:
    train = job.train is not None
    out.write_json("config.json", {**dataclasses.asdict(cfg), "command": "run" if train else "evaluate"})
    model, tokenizer, test, info = job.model, job.tokenizer, job.test, job.dataset.info
    pad = tokenizer.pad_token_id
    labels = job.builder.label_token_ids
    metrics: dict = {
        "dataset": info.name,
        "model": cfg.model.model,
        "k": cfg.data.k,
        "label_words": list(info.label_words),
    }
    timings = job.timings
    t0 = time.perf_counter()

    def evaluate(stage: str) -> None:
        t = time.perf_counter()
        result, _ = evaluate_prompts(
            model, test, labels, pad, len(info.label_words), cfg.eval.eval_batch_size, f"{stage}-test {info.name}"
        )
        timings[f"{stage}_test_seconds"] = round(time.perf_counter() - t, 2)
        metrics[stage] = result
        log(
            f"{stage:>6}: accuracy {result['accuracy']:.4f}  macro-F1 {result['macro_f1']:.4f}  "
            f"copies last label {result['copies_last_label']:.3f}  ({len(test)} prompts)"
        )
        out.write_json("metrics.json", metrics)
        out.write_json("timings.json", timings)

    if cfg.eval.fore_test or not train:
        evaluate("before")
    if train:
        train_prompts = job.train
        objective = ABFTObjective(cfg.train.head_reduction, cfg.train.log_base, cfg.train.head_filter)
        sample = train_prompts[:HEAD_SAMPLE]
        heads_before = head_statistics(model, sample, pad, objective)
        t = time.perf_counter()

        def on_step(record: StepRecord) -> None:
            out.append_jsonl("train_log.jsonl", record.as_dict())

        has_bos = tokenizer.bos_token_id is not None and train_prompts[0].input_ids[0] == tokenizer.bos_token_id
        train_model(model, train_prompts, cfg.train, pad, labels, has_bos=has_bos, seed=cfg.seed, on_step=on_step)
        timings["train_seconds"] = round(time.perf_counter() - t, 2)
        heads_after = head_statistics(model, sample, pad, objective)
        out.write_json("heads.json", {"before": heads_summary(heads_before), "after": heads_summary(heads_after)})
        if cfg.save:
            save_delta(
                model,
                find_qk_slices(model),
                out.file("delta.safetensors"),
                meta={"model": cfg.model.model, "method": cfg.train.method},
            )
        if cfg.eval.post_test:
            evaluate("after")
    if "before" in metrics and "after" in metrics:
        metrics["accuracy_gain"] = metrics["after"]["accuracy"] - metrics["before"]["accuracy"]
    timings["run_seconds"] = round(time.perf_counter() - t0, 2)
    out.write_json("metrics.json", metrics)
    out.write_json("timings.json", timings)
    return metrics


def _check_context(model, prompts) -> None:
    limit = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    longest = max(len(p.input_ids) for p in prompts)
    if limit and longest > limit:
        raise UserError(f"a prompt has {longest} tokens, more than the model's context of {limit}; lower --k")
