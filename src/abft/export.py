"""A finished run as a plain transformers model directory, with a model card: shareable without abft.

    out = export_merged("runs/sst2-abft-X", "exports/sst2-abft")    # what `abft export RUN --merged OUT` does
    # out/: config.json, model.safetensors, generation_config.json, tokenizer files, README.md (model card)
    AutoModelForCausalLM.from_pretrained(out)                       # anywhere, abft not installed

The merged weights are exactly what `load_delta(base, run)` gives: the base model (loaded as the run loaded it,
in the dtype its weights were trained in) with the trained W_Q/W_K values, or a LoRA run's adapter merged in;
every other tensor is the base's. Saved with `save_pretrained` (safetensors only) and the base's own tokenizer,
so `from_pretrained(out)` needs no custom code (`trust_remote_code=False`).

The run directory is read through the checked readers (config.json bound to the run by its fingerprint,
load_delta's shape and base-model fingerprint checks); metrics.json is only read for numbers, and anything of
another shape shows as "not recorded" in the card. OUT belongs to the user: a non-empty directory (or a file)
there is refused, the model is written into a temporary directory next to it and renamed into place, and a
failure removes only what this export created.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import secrets
import shlex
import shutil
from pathlib import Path

from .config import RunConfig
from .errors import UserError
from .progress import quiet_unless_enabled

CARD = "README.md"
# what the hub's `base_model` field can name for abft's embedded aliases (their weights: GGUF, dequantised)
ALIAS_CARDS = {
    "smollm2-135m": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0", "SmolLM2-135M-Instruct (Q4_1 GGUF)"),
    "gemma3-270m": ("google/gemma-3-270m", "gemma", "Gemma-3-270M (Q4_K_M GGUF)"),
}
TORCH_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def export_merged(run_dir: str | Path, out: str | Path, log=print) -> Path:
    """Write the merged model of a finished run, with its model card, to the new directory `out`; returns it.

    UserError (one line) for a run that is missing, unfinished, without trained weights, edited, trained on a
    4-bit base, whose weights do not fit its base model; or for an `out` that exists and is not an empty
    directory or cannot be written.
    """
    from .models import load_model
    from .models.arch import find_qk_slices
    from .models.fingerprint import base_fingerprint
    from .models.weights import check_trained, load_delta, read_meta
    from .rundir import RunDir, read_run_config

    run, out = Path(run_dir), Path(out)
    if not run.is_dir():
        raise UserError(f"run directory {run} does not exist")
    weights = check_trained(run)
    cfg = read_run_config(run)  # refused when config.json is not the one the run was started with
    state = RunDir(run).state()
    if state != "finished":
        raise UserError(f"{run} is not a finished run (status: {state or 'unknown'}); finish it first")
    if cfg.model.quantized:
        raise UserError(
            f"{run} trained LoRA on a 4-bit base: merged into a full-precision base it would not be the model that "
            "was trained and tested; share its adapter/ directory instead (peft.PeftModel.from_pretrained)"
        )
    _check_out(out)
    meta = read_meta(weights)
    dtype = TORCH_DTYPES.get(meta.get("base_dtype"), cfg.model.dtype or "fp32")
    log(f"loading {cfg.model.model} ({dtype}) on the CPU")
    model, _ = load_model(cfg.model.model, device="cpu", dtype=dtype, trust_remote_code=cfg.model.trust_remote_code)
    if not type(model).__module__.startswith("transformers."):
        raise UserError(
            f"{cfg.model.model} runs its own Python code ({type(model).__name__}): a merged copy could not be loaded "
            "without trust_remote_code; share the run's trained weights instead"
        )
    fingerprint = meta.get("base_fingerprint")
    if fingerprint is None:  # saved by an abft before fingerprints: the card names the base loaded here
        replaced = [] if weights.is_dir() else find_qk_slices(model)
        fingerprint = base_fingerprint(model, replaced)["base_fingerprint"]
    load_delta(model, run)  # refuses another base model (fingerprint) or tensors of other shapes; LoRA: merged
    model.requires_grad_(False)
    log(f"writing the merged model to {out}")
    card = model_card(
        cfg,
        RunDir(run).read_config(),
        RunDir(run).read_json("metrics.json", {}),
        fingerprint,
        meta.get("base_dtype") or str(model.dtype).removeprefix("torch."),
        run,
        out,
        weights.is_dir(),
    )
    return _write(out, model, _base_tokenizer(cfg), card)


def _check_out(out: Path) -> None:
    """UserError when `out` is a file or a non-empty directory, or its nearest existing parent is not writable."""
    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink():
            raise UserError(f"{out} exists and is not a directory; pick a new directory for the merged model")
        if any(out.iterdir()):
            raise UserError(f"{out} exists and is not empty; pick a new directory for the merged model")
    parent = next(p for p in (out.parent, *out.parent.parents) if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot create {out}: {parent} is not a writable directory")


def _base_tokenizer(cfg: RunConfig):
    """The base model's tokenizer as it is stored (load_model gives a pad token to one that has none)."""
    from transformers import AutoTokenizer

    from .models.loading import resolve

    source, _ = resolve(cfg.model.model)
    return AutoTokenizer.from_pretrained(source, local_files_only=True, trust_remote_code=False)


def _write(out: Path, model, tokenizer, card: str) -> Path:
    """save_pretrained into a temporary directory beside `out`, then rename it to `out` (absent or empty)."""
    missing = [p for p in (out.parent, *out.parent.parents) if not p.exists()]
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()  # mode 0777 minus the umask, as the user's other directories
        with quiet_unless_enabled():  # transformers' "Writing model shards" bar
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        (tmp / CARD).write_text(card)
        mode = tmp.stat().st_mode & 0o666  # the umask's file mode (safetensors writes its files private)
        for path in tmp.rglob("*"):
            if path.is_file() and not path.is_symlink():
                path.chmod(mode)
        os.replace(tmp, out)  # an empty directory at `out` is replaced; a non-empty one (created since) refuses
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        for created in missing:  # deepest first; only if still empty
            try:
                created.rmdir()
            except OSError:
                break
        if isinstance(exc, OSError):
            raise UserError(f"cannot write the merged model to {out}: {exc.strerror or exc}") from exc
        raise
    return out


# ------------------------------------------------------------------------------------------------ card
def model_card(
    cfg: RunConfig,
    config: dict,
    metrics: dict,
    fingerprint: str,
    dtype: str,
    run: Path,
    out: Path,
    lora: bool,
) -> str:
    """README.md of the exported directory: hub front matter, then base model, training, results, command."""
    m, t, d = cfg.model, cfg.train, cfg.data
    hub, license, alias_note = ALIAS_CARDS.get(m.model, (None, None, None))
    if hub is None and re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", m.model) and not Path(m.model).exists():
        hub = m.model  # a hub id
    front = ["---"] + ([f"base_model: {hub}"] if hub else []) + ["library_name: transformers"]
    front += [f"license: {license}"] if license else []
    front += ["pipeline_tag: text-generation", "tags:", "- abft", "- attention-fine-tuning", "- in-context-learning"]
    front += ["---", ""]
    method = (
        "ABFT (attention loss on induction heads)" if t.method == "abft" else "E2E (cross-entropy of the gold label)"
    )
    trained = "W_Q and W_K (query and key projections" + (
        ", their biases where the model has them)" if t.train_bias else ")"
    )
    if lora:
        trained = (
            f"a LoRA adapter (rank {t.lora_r}, alpha {_num(t.lora_alpha)}) on the query and key projections, "
            "merged into W_Q / W_K"
        )
    title = f"{_text(Path(m.model).name or m.model)} + {t.method.upper()} on {_text(_dataset_name(d.dataset, metrics))}"
    base_line = f"`{_text(m.model)}`" + (f" ({alias_note}, abft's embedded model)" if alias_note else "")
    lines = [
        f"# {title} (k = {d.k})",
        "",
        f"The base model with its attention trained by abft{_version()} with {method}: only {trained} "
        "changed; every other weight is the base model's, bit for bit. Method: Cho et al., \"Mechanistic "
        'Fine-tuning for In-context Learning", BlackboxNLP 2025. Loads with plain transformers:',
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f'model = AutoModelForCausalLM.from_pretrained("{_text(out.name)}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{_text(out.name)}")',
        "```",
        "",
        "## Base model",
        f"- model: {base_line}, {dtype}",
        f"- fingerprint: `{fingerprint}`",
        "  (sha256 of the base weights the trained tensors do not overwrite, in "
        + dtype
        + ("; with LoRA all of them, W_Q / W_K included" if lora else "")
        + "; abft's delta files record it and refuse to load onto another base)",
        "",
        "## Training",
        f"- dataset: `{_text(d.dataset)}`, k = {d.k} demonstrations per prompt, label tokens `{d.label_token_mode}`",
        f"- method: {method}; trained: {trained}",
        f"- {d.train_samples} training prompts, {t.epochs} epoch(s), {t.pseudo_batch_size} prompts per optimiser step, "
        f"seed {cfg.seed}",
        *_recipe_lines(cfg, config, metrics),
        "",
        "## Results",
        *_results(metrics),
        "",
        "## Reproduce",
        "```",
        reproduce_command(cfg, config.get("recipe_choices")),
        f"abft export {shlex.quote(str(run))} --merged {shlex.quote(str(out))}",
        "```",
        "",
    ]
    return "\n".join(front + lines)


def _version() -> str:
    from importlib import metadata

    try:
        return " " + metadata.version("abft")
    except metadata.PackageNotFoundError:
        return ""


def _text(value) -> str:
    """A value for Markdown: control characters and backticks removed (a path or name from the run's files)."""
    return re.sub(r"[\x00-\x1f\x7f`]", "", str(value))


def _num(x) -> str:
    """A number for people: 3 significant digits past the leading zeros, no float noise (2e-05, 0.00029, 32)."""
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        return str(x)
    if x == int(x) and abs(x) < 1e6:
        return str(int(x))
    return f"{x:.3g}"


def _dataset_name(dataset: str, metrics: dict) -> str:
    name = metrics.get("dataset")
    return name if isinstance(name, str) and name else Path(dataset).stem or dataset


def _recipe_lines(cfg: RunConfig, config: dict, metrics: dict) -> list[str]:
    t = cfg.train
    lines = [f"- recipe `{t.recipe}`: lr {_num(t.lr)}, adaptive penalty {t.adaptive_penalty}, keep {t.keep}"]
    choices = config.get("recipe_choices")
    if isinstance(choices, dict) and choices:
        chosen = ", ".join(f"{_text(k)} {_text(_num(v))}" for k, v in choices.items() if k != "recipe")
        lines.append(f"- chosen by the recipe (config.json `recipe_choices`): {chosen}")
    validation = metrics.get("validation")
    if isinstance(validation, dict) and _finite(validation.get("prompts")) and "kept_step" in validation:
        lines.append(
            f"- validation: {_num(validation['prompts'])} prompts from the demonstration split (never the test split), "
            f"weights of step {_text(validation['kept_step'])} kept"
        )
    return lines


def _finite(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _results(metrics: dict) -> list[str]:
    """before / after / change table from metrics.json; whatever is missing or of another shape: not recorded."""
    stages = {s: metrics.get(s) if isinstance(metrics.get(s), dict) else {} for s in ("before", "after")}
    if not any(_finite(stages[s].get("accuracy")) for s in stages):
        return ["Accuracy before and after training: not recorded in this run (--no-fore-test / --no-post-test)."]
    lines = [
        "StaICC test prompts (never used for training or for choosing settings); standard error of an accuracy "
        "over n prompts: sqrt(a (1 - a) / n); 95% interval: +- 1.96 standard errors.",
        "",
        "| | accuracy | standard error | 95% interval | macro-F1 | copies the last label | test prompts |",
        "|---|---|---|---|---|---|---|",
    ]
    se = {}
    for stage, m in stages.items():
        acc, n = m.get("accuracy"), m.get("prompts")
        if not _finite(acc):
            lines.append(f"| {stage} | not measured | | | | | |")
            continue
        se[stage] = m.get("accuracy_se") if _finite(m.get("accuracy_se")) else None
        interval = f"[{acc - 1.96 * se[stage]:.3f}, {acc + 1.96 * se[stage]:.3f}]" if se[stage] is not None else ""
        cells = [f"{acc:.3f}", f"{se[stage]:.3f}" if se[stage] is not None else "", interval]
        cells += [f"{m[k]:.3f}" if _finite(m.get(k)) else "" for k in ("macro_f1", "copies_last_label")]
        cells.append(str(int(n)) if _finite(n) else "")
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    if len(se) == 2:
        change = stages["after"]["accuracy"] - stages["before"]["accuracy"]
        paired = metrics.get("change") if isinstance(metrics.get("change"), dict) else {}
        error = paired.get("se") if _finite(paired.get("se")) else None
        note = "paired: the same prompts before and after"
        if error is None and None not in se.values():
            error = math.hypot(se["before"], se["after"])
            note = "treating the two stages as independent samples, which overstates it"
        cells = [f"{change:+.3f}", "", ""]
        if error is not None:
            cells[1:] = [f"{error:.3f}", f"[{change - 1.96 * error:+.3f}, {change + 1.96 * error:+.3f}]"]
        lines.append("| change | " + " | ".join(cells) + " | | | |")
        lines += ["", f"(The change's standard error is {note}.)"]
    return lines


def reproduce_command(cfg: RunConfig, recipe_choices=None) -> str:
    """`abft run ...` with every setting that differs from the default, except --output and what --recipe
    chose (it chooses the same again)."""
    chosen = set(recipe_choices) if isinstance(recipe_choices, dict) else set()
    words = ["abft", "run"]
    default = RunConfig()
    for f, value, base in _fields(cfg, default):
        if f.name in {"output", "checkpoint_every"} or f.name in chosen or value == base:
            continue
        meta = f.metadata
        if meta.get("negate"):
            words.append(meta["negate"])
        elif isinstance(value, bool):
            words.append(meta.get("flag") or "--" + f.name.replace("_", "-"))
        elif value is not None:
            words.append(meta.get("flag") or "--" + f.name.replace("_", "-"))
            words += [shlex.quote(_num(v)) for v in (value if isinstance(value, list | tuple) else [value])]
    return " ".join(words)


def _fields(cfg, default):
    """(field, value, default value) of every setting of a RunConfig, section by section."""
    for f in dataclasses.fields(cfg):
        value, base = getattr(cfg, f.name), getattr(default, f.name)
        if dataclasses.is_dataclass(value):
            yield from _fields(value, base)
        else:
            yield (
                f,
                (list(value) if isinstance(value, tuple) else value),
                (list(base) if isinstance(base, tuple) else base),
            )
