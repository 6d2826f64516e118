"""Run configuration: dataclasses whose field metadata drives the CLI flags and --help.

Every field has a help text; `flag` overrides the flag name (default: --field-name); `negate` turns a
True-by-default boolean into a --no-... switch. A config round-trips through JSON (config.json of a run).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from .errors import UserError, param
from .evaluation.calibration_methods import CALIBRATIONS
from .limits import check_at_least, check_run
from .objectives import OBJECTIVES

# the weights a training run keeps at its end (abft.validation), as the recipe line names them
KEEP = {"best": "the best step", "best-f1": "the step of best macro-F1", "last": "the last step"}


def opt(default, help: str, flag: str | None = None, choices=None, negate: str | None = None, nargs=None, **extra):
    """A config field. `extra`: const (nargs "*": the value of the bare flag), legacy ({old bool: value} that
    config.json files of older versions may hold for a field that is no longer a bool; see legacy_value)."""
    meta = {"help": help, "flag": flag, "choices": choices, "negate": negate, "nargs": nargs, **extra}
    if isinstance(default, list | tuple):
        return field(default_factory=lambda d=default: type(default)(d), metadata=meta)
    return field(default=default, metadata=meta)


MAX_LR = 1.0


@dataclass
class ModelConfig:
    model: str = opt("smollm2-135m", "embedded alias (smollm2-135m, gemma3-270m), hub id, directory or .gguf file")
    device: str | None = opt(None, "torch device (default: cuda if available, else cpu)")
    dtype: str | None = opt(
        None, "fp32, bf16 or fp16 (default: fp32 on CPU, bf16 on GPU)", choices=["fp32", "bf16", "fp16"]
    )
    quantized: bool = opt(
        False,
        "4-bit NF4 base with bf16 compute (bitsandbytes, CUDA only); `abft run` then trains LoRA adapters "
        "(--lora-r, 16 if not given)",
    )
    fsdp: bool = opt(
        False,
        "under torchrun / accelerate launch: shard the weights, gradients and Adam state over the processes "
        "(FSDP2) instead of a whole model per process, for models that do not fit one device "
        "(also on with an Accelerate FSDP config)",
    )
    trust_remote_code: bool = opt(
        False, "let a model directory or hub repository run its own Python code (auto_map); only for code you trust"
    )


@dataclass
class DataConfig:
    dataset: str = opt("sst2", "StaICC dataset name or index (see `abft datasets`), or a CSV/JSONL/spec file")
    k: int = opt(4, "demonstrations per prompt")
    label_token_mode: str = opt(
        "space",
        "space: label token is ' word' at demos and prediction (prompt ends 'label:'); "
        "staicc: StaICC's exact text and scorer",
        choices=["space", "staicc"],
    )
    train_samples: int = opt(512, "training prompts (from the calibration split)")
    test_samples: int = opt(1024, "test prompts (StaICC's protocol uses 1024: 512 queries x 2 demonstration sets)")


@dataclass
class TrainConfig:
    method: str = opt(
        "abft",
        " or ".join(f"{name} ({entry.help})" for name, entry in OBJECTIVES.items()),
        choices=OBJECTIVES.keys(),  # a live view: an objective registered later is a choice too
    )
    recipe: str = opt(
        "auto",
        "where unset settings come from: auto (lr scaled to the model's W_Q/W_K, validation every few steps, the "
        "best step kept) or paper (the paper's lr 2e-5, the last step kept); explicit flags always win",
        choices=["auto", "paper"],
    )
    lr: float | None = opt(None, "Adam learning rate, constant (default: from --recipe)")
    pseudo_batch_size: int = opt(32, "training prompts per optimiser step (accumulated over micro-batches)")
    micro_batch_size: int = opt(
        8, "training prompts per forward/backward pass (memory vs speed; does not change the step)"
    )
    epochs: int = opt(2, "passes over the training prompts")
    reward: float = opt(1.0, "B: weight of (1 - attention) on correct-label tokens", flag="--correct-label-reward")
    penalty: float = opt(0.5, "A_0: weight of attention on wrong-label tokens", flag="--wrong-label-penalty")
    adaptive_penalty: str = opt("pid", "schedule of A from the induction-head count", choices=["none", "p", "pid"])
    p_factor: float = opt(0.03, "factor of the P schedule")
    pid: tuple = opt((0.03, 0.005, 0.005), "Cp Ci Cd of the PID schedule", nargs=3)
    clamp_penalty: bool = opt(True, "keep A >= 0", negate="--no-clamp-penalty")
    restricted_gradient: bool = opt(False, "update only the heads that are induction heads for each example")
    head_filter: bool = opt(
        True, "apply the induction-head filter (off: every head gets the loss)", negate="--no-head-filter"
    )
    head_reduction: str = opt("sum", "combine induction heads' losses by sum (paper) or mean", choices=["sum", "mean"])
    log_base: str = opt("e", "log base in the threshold k / (k + log n_t)", choices=["e", "2", "10"])
    count_bos: bool = opt(True, "n_t counts a BOS token when the tokenizer adds one", negate="--no-count-bos")
    train_bias: bool = opt(True, "also train q/k projection biases where the model has them", negate="--no-train-bias")
    e2e_over: str = opt(
        "vocab", "E2E cross-entropy over the whole vocabulary or only the label tokens", choices=["vocab", "labels"]
    )
    lora_r: int = opt(
        0,
        "LoRA rank on the query/key projections only (0: train W_Q/W_K themselves); the paper used r 16 with "
        "lr 1e-4, which both recipes then use unless --lr is given",
    )
    lora_alpha: float = opt(32.0, "LoRA alpha (the update is scaled by alpha / r)")
    lora_dropout: float = opt(0.0, "dropout on the LoRA input (0 keeps training deterministic)")
    gradient_checkpointing: bool = opt(False, "recompute activations in the backward pass: less memory, slower")
    val_samples: int | None = opt(
        None,
        "validation prompts scored during training (queries and demonstrations from the demonstration split, "
        "never the test split; 0: none; default: from --recipe)",
    )
    val_every: int = opt(4, "optimiser steps between validation scorings (and after the last step)")
    keep: str | None = opt(
        None,
        "the weights kept at the end: best (the step with the highest validation accuracy, step 0 = the "
        "unchanged model included), best-f1 (highest validation macro-F1: for imbalanced tasks, where accuracy "
        "can rise as the model leans onto the majority label) or last (default: from --recipe)",
        choices=list(KEEP),
    )

    def validate(self) -> None:
        """UserError for a setting no run can use (checked by RunConfig.validate before any work, and by train())."""
        check_at_least(
            [
                ("pseudo_batch_size", self.pseudo_batch_size, 1),
                ("micro_batch_size", self.micro_batch_size, 1),
                ("epochs", self.epochs, 1),
                ("val_every", self.val_every, 1),
                ("val_samples", self.val_samples or 0, 0),
            ]
        )
        if self.method not in OBJECTIVES:
            raise UserError(f"{param('method')} must be one of {', '.join(OBJECTIVES)}, got {self.method!r}")
        lr = param("lr")
        if self.lr is not None and not 0 < self.lr < math.inf:
            raise UserError(f"{lr} must be positive and finite, got {self.lr}; the paper uses 2e-5")
        if self.keep not in (None, "last") and self.val_samples == 0:
            raise UserError(
                f"{param('keep', self.keep)} needs validation prompts: give {param('val_samples', 'N')} (N >= 1) or "
                f"{param('keep', 'last')}"
            )
        if self.lr is not None and self.lr > MAX_LR:  # a larger finite lr only diverges (1e39 overflows Adam)
            raise UserError(f"{lr} must be at most {MAX_LR}, got {self.lr}; the paper uses 2e-5")
        weights = [("reward", self.reward), ("penalty", self.penalty)]
        weights += [("p_factor", self.p_factor)] + [("pid", gain) for gain in self.pid]
        for name, value in weights:
            if not 0 <= value < math.inf:
                raise UserError(f"{param(name)} must be a finite number >= 0, got {value}")
        check_lora(self.lora_r, self.lora_alpha, self.lora_dropout, off_allowed=True)
        check_restricted_gradient(self.restricted_gradient, lora=bool(self.lora_r), sharded=False)


def check_lora(r: int, alpha: float, dropout: float, off_allowed: bool = False) -> None:
    """LoRA's settings (rank 0: no adapter, where `off_allowed`)."""
    if r < (0 if off_allowed else 1):
        bound = "0 (off) or positive" if off_allowed else "at least 1"
        raise UserError(f"{param('lora_r')} must be {bound}, got {r}")
    if r and not 0 < alpha < math.inf:
        raise UserError(f"{param('lora_alpha')} must be positive, got {alpha}")
    if not 0 <= dropout < 1:
        raise UserError(f"{param('lora_dropout')} must be in [0, 1), got {dropout}")


def check_restricted_gradient(restricted: bool, lora: bool, sharded: bool) -> None:
    """--restricted-gradient updates single heads' rows: refused where a trained tensor mixes heads."""
    if restricted and lora:
        raise UserError(
            f"{param('restricted_gradient')} cannot be combined with {param('lora_r')}: lora_A is shared by all heads"
        )
    if restricted and sharded:
        raise UserError(
            f"{param('restricted_gradient')} cannot be combined with {param('fsdp')}: a head's rows span the shards"
        )


@dataclass
class EvalConfig:
    fore_test: bool = opt(True, "evaluate before training", negate="--no-fore-test")
    post_test: bool = opt(True, "evaluate after training", negate="--no-post-test")
    reuse_fore_test: bool = opt(
        False,
        "reuse the before metrics of an earlier run of the same base model, prompts and evaluation settings "
        "(cached in $ABFT_CACHE/fore-test; not with MAUVE)",
    )
    eval_batch_size: int = opt(
        16, "prompts per forward pass when scoring (test, validation, calibration, MAUVE; memory vs speed)"
    )
    test_type: tuple = opt(
        ("normal",),
        "tests before/after training, several allowed: normal (accuracy on the test prompts), template "
        "(consistency over 9 templates, 100 queries), demo (consistency over 8 demonstration sets, 128 queries)",
        choices=["normal", "template", "demo"],
        nargs="+",
    )
    generalization_test: bool = opt(False, "also test on the 8 paper datasets: in-domain vs out-of-domain table")
    unseen_label_test: bool = opt(
        False, "accuracy when no demonstration carries the query's gold label, vs normal sampling and 0-shot"
    )
    bias_test: bool = opt(False, "contextual, domain and posterior bias, and label-noise (GLER) slopes")
    calibration: tuple = opt(
        (),
        "calibration baselines on the test prompts, several allowed (a bare --calibration: all of them): "
        "contextual (Zhao et al. 2021: 'N/A' / '' / '[MASK]' queries in each test prompt), domain (Fei et al. "
        "2023: 128 random-word queries), batch (Zhou et al. 2024), hidden (Cho et al.: nearest label centroid of "
        "the last hidden state) and knn (Xu et al. 2023: kNN prompting); their extra prompts come from the "
        "demonstration split",
        choices=list(CALIBRATIONS),
        nargs="*",
        const=tuple(CALIBRATIONS),
        legacy={True: ("contextual",), False: ()},
    )
    mauve_test: bool = opt(
        False,
        "MAUVE of generated vs reference continuations of prefixes (built in: the dataset's test texts cut in "
        "half), features from the base model; needs pip install 'abft[mauve]'",
    )
    mauve_prefix: str | None = opt(
        None,
        'prefix file for the MAUVE test (implies --mauve-test): .jsonl of {"prefix", "reference" (optional)}, '
        "or plain text lines cut in half by words",
    )
    mauve_samples: int = opt(128, "MAUVE prefixes (the first N of the built-in set or of --mauve-prefix)")
    mauve_max_new_tokens: int = opt(
        32, "MAUVE: new tokens per prefix at most (and at most its reference's length; cut at EOS / newline)"
    )
    mauve_decoding: str = opt(
        "sample",
        "MAUVE generation: sample (nucleus top-p 0.95, seeded by --seed) or greedy",
        choices=["sample", "greedy"],
    )


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = opt(0, "seed of training-prompt sampling and order, LoRA initialisation and MAUVE sampling")
    save: bool = opt(True, "save the trained W_Q/W_K tensors", negate="--no-save")
    output: str | None = opt(None, "run directory (default: runs/<dataset>-<method>-<time>)")
    checkpoint_every: int = opt(1, "optimiser steps between checkpoints (resume with `abft run --resume DIR`)")

    def validate(self, train: bool = True) -> None:
        """Every bound on the settings of `abft run` (train) or `abft evaluate`: UserError for the first broken."""
        checks = [("k", self.data.k, 0), ("test_samples", self.data.test_samples, 1)]
        checks.append(("eval_batch_size", self.eval.eval_batch_size, 1))
        if self.eval.mauve_test or self.eval.mauve_prefix:
            checks += [("mauve_samples", self.eval.mauve_samples, 1)]
            checks += [("mauve_max_new_tokens", self.eval.mauve_max_new_tokens, 1)]
        if train:
            checks += [("train_samples", self.data.train_samples, 1), ("checkpoint_every", self.checkpoint_every, 1)]
            self.train.validate()
        check_at_least(checks)
        check_run(self, train)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        return _from_dict(cls, d)


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "eval": EvalConfig}


def _from_dict(cls, d):
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        value = d[f.name]
        if isinstance(f.default_factory, type) and dataclasses.is_dataclass(f.default_factory):  # a section
            value = _from_dict(f.default_factory, value)
        elif isinstance(value, list) and f.metadata.get("nargs"):
            value = tuple(value)
        value = legacy_value(f, value)
        kwargs[f.name] = value
    return cls(**kwargs)


def legacy_value(f: dataclasses.Field, value):
    """`value` of field `f` as this version spells it: metadata `legacy` maps a bool that older versions wrote
    for the field (--calibration was a switch: true is now ("contextual",), false ())."""
    legacy = f.metadata.get("legacy") or {}
    return legacy[value] if isinstance(value, bool) and value in legacy else value
