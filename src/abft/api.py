"""The public Python API: ABFT on a model object you loaded yourself (any transformers causal LM, with or without
peft), from your own labelled examples. Re-exported by `abft` (loaded on first use, so `import abft` stays cheap).

    import abft
    train_set = abft.prompts(tokenizer, examples, ["negative", "positive"], k=4)            # (text, label) pairs
    test_set = abft.prompts(tokenizer, queries, ["negative", "positive"], k=4, demonstrations=examples)
    before = abft.evaluate(model, tokenizer, test_set)           # metrics + per-prompt "predictions"
    records = abft.fit(model, tokenizer, train_set, method="abft", lr=1e-4, epochs=2)  # TrainConfig fields
    after = abft.evaluate(model, tokenizer, test_set, before=before)                   # with "flipped"
    abft.save(model, "out/")          # delta.safetensors (or adapter/ with LoRA)
    abft.load(fresh_model, "out/")    # the trained W_Q/W_K into another copy of the base model

Everything here is the library the CLI runs (data.PromptBuilder and the samplers, train.train, evaluation,
models.weights); this module only adapts its inputs. The training function is `fit`, not `train`: `abft.train`
is the training package.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

from .config import TrainConfig
from .data import Dataset, DatasetInfo, PromptBuilder, rows_from_examples, test_pairs, train_pairs
from .errors import UserError, param
from .evaluation import evaluate_prompts
from .evaluation.predictions import prediction_records
from .models.context import check_context
from .models.weights import load_delta, save_trained
from .train import StepRecord
from .train import train as train_model
from .train.setup import ModelState

__all__ = ["Prompts", "evaluate", "fit", "load", "prompts", "save"]


class Prompts(list):
    """A list of data.Prompt (token ids, demonstration label positions, gold label) with what training and
    evaluation need to read them: the label words, their token ids and the tokenizer's prefix length."""

    def __init__(self, items: Sequence, label_words: Sequence[str], label_token_ids: Sequence[int], prefix: int):
        super().__init__(items)
        self.label_words = tuple(label_words)
        self.label_token_ids = list(label_token_ids)
        self.prefix_tokens = prefix


def prompts(
    tokenizer,
    examples,
    label_words: Sequence[str],
    *,
    k: int = 4,
    n: int | None = None,
    demonstrations=None,
    seed: int = 0,
    input_prefix: str = "input: ",
    label_prefix: str = "label: ",
    text_key: str = "text",
    label_key: str = "label",
    label_token_mode: str = "space",
) -> Prompts:
    """In-context prompts from your examples: k demonstrations, then a query whose label the model predicts.

    `examples`: (text, label) pairs, or mappings with `text_key` / `label_key` (a Hugging Face
    datasets.Dataset is such a sequence); a label is a label word or its index into `label_words`
    (single-token words). Without `demonstrations`, prompts for training: each example is a query once per
    pass (n prompts, default one per example) with k other examples as demonstrations (data.train_pairs,
    shuffled by `seed`). With `demonstrations` (examples of the same form), prompts for testing: prompt j asks
    example j % len(examples) with k demonstrations drawn from them by StaICC's sampler (data.test_pairs;
    fixed, `seed` unused). Prompt text: `input_prefix` text `label_prefix` word, one demonstration per line.
    """
    rows = rows_from_examples(examples, label_words, text_key, label_key)
    demos = (
        []
        if demonstrations is None
        else rows_from_examples(demonstrations, label_words, text_key, label_key, "demonstrations")
    )
    if k < 0 or (n is not None and n < 1):
        raise UserError(f"{param('k', k)} must be >= 0 and {param('n', n)} >= 1")
    pool = len(demos) if demonstrations is not None else len(rows) - 1
    if k > pool:
        where = "demonstrations" if demonstrations is not None else "examples besides the query"
        raise UserError(f"{param('k', k)} is more than the {pool} {where}; lower {param('k')} or give more")
    cut = len(demos)
    sizes = (0, cut, len(rows)) if demonstrations is not None else (len(rows), 0, 0)
    info = DatasetInfo(-1, "examples", "", input_prefix, label_prefix, tuple(label_words), sizes)
    if demonstrations is not None:
        dataset = Dataset(info, demos + rows, [], list(range(cut)), list(range(cut, cut + len(rows))), "user")
        pairs = test_pairs(dataset, k, len(rows) if n is None else n)
    else:
        dataset = Dataset(info, rows, list(range(len(rows))), [], [], "user")
        pairs = train_pairs(dataset, k, len(rows) if n is None else n, seed)
    builder = PromptBuilder.for_dataset(tokenizer, info, label_token_mode)
    return Prompts(
        builder.build_pairs(dataset, pairs), builder.label_words, builder.label_token_ids, len(builder.prefix_ids)
    )


def fit(
    model,
    tokenizer,
    prompts: Prompts,
    method: str = "abft",
    *,
    seed: int = 0,
    on_step: Callable[[StepRecord], None] | None = None,
    **settings,
) -> list[StepRecord]:
    """Train W_Q/W_K of `model` in place on `prompts` (from abft.prompts) with `method` ("abft", "e2e" or any
    registered objective); `settings`: TrainConfig fields (lr, epochs, pseudo_batch_size, lora_r, ...; the
    ones left out come from the recipe, as in `abft run`). Returns one StepRecord per optimiser step.

    The model comes back as it came in apart from its trained weights (attention implementation, requires_grad
    flags, train/eval mode); with lora_r and no adapter yet, a LoRA adapter is added (models.lora) and trained.
    """
    _check_prompts(prompts)
    cfg = _train_config(method, settings)
    check_context(model, prompts)
    return train_model(
        model,
        prompts,
        cfg,
        _pad_id(tokenizer),
        prompts.label_token_ids,
        prefix_tokens=prompts.prefix_tokens,
        seed=seed,
        on_step=on_step,
    )


def evaluate(model, tokenizer, prompts: Prompts, *, batch_size: int = 16, before: dict | None = None) -> dict:
    """The normal test's metrics of `model` on `prompts` (accuracy, accuracy_se, macro_f1, true-label likelihood,
    ECE, copies_last_label, prompts) and "predictions": one record per prompt (index, gold, gold_label, probs,
    prediction, predicted_label, correct; with `before`, an earlier evaluate() result on the same prompts,
    also flipped). The model is scored in evaluation mode and left in the mode it was in."""
    _check_prompts(prompts)
    check_context(model, prompts)
    state = ModelState.of(model)
    model.eval()
    try:
        metrics, probs = evaluate_prompts(
            model, prompts, prompts.label_token_ids, _pad_id(tokenizer), len(prompts.label_words), batch_size
        )
    finally:
        state.restore(model)
    earlier = before.get("predictions") if before else None
    metrics["predictions"] = prediction_records(probs, prompts, prompts.label_words, earlier)
    return metrics


def save(model, directory: str | Path, meta: dict | None = None) -> Path:
    """Save what training changed into `directory` (created if needed): delta.safetensors (the trained W_Q/W_K
    and the base model's fingerprint), or adapter/ (a peft adapter) with LoRA; returns the file or directory.
    `meta`: more to record in its metadata (e.g. {"model": "HuggingFaceTB/SmolLM2-135M"})."""
    return save_trained(model, directory, meta=meta)


def load(model, path: str | Path):
    """Put saved trained weights (abft.save's directory, an `abft run` directory, or the file / adapter itself)
    into `model` in place, refusing weights trained on another base model; returns `model`."""
    load_delta(model, path)
    return model


def _check_prompts(prompts) -> None:
    if not isinstance(prompts, Prompts):
        raise UserError(f"{param('prompts')} must come from abft.prompts(), not {type(prompts).__name__}")
    if not prompts:
        raise UserError(f"{param('prompts')} is empty; give at least one example")


def _train_config(method: str, settings: dict) -> TrainConfig:
    """TrainConfig(method=method, **settings), unknown names refused with the known ones."""
    known = {f.name for f in dataclasses.fields(TrainConfig)} - {"method"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise UserError(
            f"unknown training setting {param(unknown[0])}; use TrainConfig fields: {', '.join(sorted(known))}"
        )
    return TrainConfig(method=method, **settings)


def _pad_id(tokenizer) -> int:
    """The id padding uses (masked out, so any token will do when the tokenizer has no pad token)."""
    for pad in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if pad is not None:
            return int(pad)
    return 0
