"""MAUVE of generated continuations against reference continuations, before and after fine-tuning.

    test = prepare(model, tokenizer, dataset, cfg, train=True)   # None unless --mauve-test / --mauve-prefix
    metrics["before"]["mauve"] = test.run(model, "before", run_dir)
    ... training ...
    metrics["after"]["mauve"] = test.run(model, "after", run_dir)

Prefixes (at most --mauve-samples, in order):
- built in (default): the run dataset's test-split texts of at least MIN_WORDS words, in split order, each
  cut at half its words (prefix = the first n // 2 words, reference continuation = the rest). Made from the
  installed StaICC data at run time; no text is stored in the package.
- `--mauve-prefix FILE`: a `.jsonl` file of objects {"prefix": str, "reference": str (optional)}, or any other
  file of plain text lines (blank lines skipped) cut at half their words like the built-in set. A reference
  text is prefix + " " + reference (no space added when the reference starts with whitespace); a prefix's
  trailing whitespace is dropped. Without any reference, "mauve" is null and only the after stage's
  "vs_before" (the generations before fine-tuning as the reference) is computed.

Generation (evaluation.generation): --mauve-decoding sample (nucleus, top-p 0.95, seeded by --seed; the same
seed before and after, so the two stages differ only by the model) or greedy. A prefix with a reference gets
at most as many new tokens as its reference continuation has (so generated and reference texts have
comparable lengths; MAUVE would otherwise mostly measure length), and never more than --mauve-max-new-tokens;
a continuation is cut at EOS and at the first newline. A generated text is prefix + continuation.

Features: the final hidden state at the last token of each full text (prefix + continuation), computed with
the run's BASE model weights for references, before and after texts alike (training's W_Q/W_K, or LoRA
adapters, are swapped out while featurising), so every stage is measured in one fixed feature space; no
other model is loaded and nothing is downloaded. MAUVE itself: `mauve.compute_mauve(p_features=references,
q_features=generations)` from the `mauve-text` package (k-means buckets: max(2, round(n / 10)), seed 25);
"mauve_star" is its smoothed variant (Pillutla et al., JMLR 2023), steadier for the few hundred texts used
here. Generations go to mauve_<stage>.jsonl in the run directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from abft.errors import UserError

from .generation import DECODINGS, generate_continuations, text_features

MIN_WORDS = 4  # a built-in prefix/reference pair needs a text of at least this many words
MIN_PREFIXES = 2
POOLING = "last"
MAUVE_SEED = 25  # mauve-text's default k-means seed
INSTALL_HINT = "pip install 'abft[mauve]'"


@dataclass(frozen=True)
class PrefixItem:
    prefix: str
    reference: str | None = None  # the continuation written by a person, without the prefix

    def reference_text(self) -> str | None:
        if self.reference is None:
            return None
        return join(self.prefix, self.reference if self.reference[:1].isspace() else " " + self.reference)


def join(prefix: str, continuation: str) -> str:
    return prefix + continuation


def split_text(text: str) -> PrefixItem:
    """Cut a text at half its words: the first n // 2 words are the prefix, the rest the reference."""
    words = text.split()
    if len(words) < 2:
        return PrefixItem(" ".join(words))
    cut = len(words) // 2
    return PrefixItem(" ".join(words[:cut]), " ".join(words[cut:]))


def builtin_prefixes(dataset, n: int) -> list[PrefixItem]:
    """The first `n` test-split texts of `dataset` with at least MIN_WORDS words, each cut in half."""
    rows = dataset.rows
    out = []
    for i in dataset.test:
        text = rows[i][0]
        if len(text.split()) >= MIN_WORDS:
            out.append(split_text(text))
            if len(out) == n:
                break
    return out


def load_prefix_file(path: str | Path, n: int | None = None) -> list[PrefixItem]:
    """Read a --mauve-prefix file (see the module docstring); at most the first `n` prefixes."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read --mauve-prefix file {path} ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise UserError(f"--mauve-prefix file {path} is not UTF-8 text") from None
    items: list[PrefixItem] = []
    jsonl = path.suffix.lower() == ".jsonl"
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if jsonl:
            items.append(_json_item(line, f"{path}:{number}"))
        else:
            items.append(split_text(line))
        if n is not None and len(items) == n:
            break
    return items


def _json_item(line: str, where: str) -> PrefixItem:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UserError(f"{where}: not a JSON object ({exc.msg})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("prefix"), str):
        raise UserError(f'{where}: expected an object with a string "prefix" (and optionally "reference")')
    reference = obj.get("reference")
    if reference is not None and not isinstance(reference, str):
        raise UserError(f'{where}: "reference" must be a string')
    return PrefixItem(obj["prefix"].rstrip(), reference)


def require_mauve() -> None:
    """UserError (one line) unless mauve-text and what it imports (faiss, scikit-learn) are importable."""
    try:
        import mauve  # noqa: F401
    except ImportError as exc:
        missing = getattr(exc, "name", None) or "mauve"
        raise UserError(
            f"--mauve-test needs the mauve-text package (with faiss-cpu and scikit-learn; {missing} is missing): "
            f"{INSTALL_HINT}"
        ) from None


@contextlib.contextmanager
def _quiet_native_output():
    """Silence faiss's C-level k-means warnings ("please provide at least ... training points")."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def mauve_score(p_features: np.ndarray, q_features: np.ndarray, seed: int = MAUVE_SEED) -> dict:
    """MAUVE between two feature sets (rows = texts); the scalar outputs of mauve.compute_mauve."""
    import mauve

    p = np.ascontiguousarray(p_features, dtype=np.float32)
    q = np.ascontiguousarray(q_features, dtype=np.float32)
    with _quiet_native_output():
        out = mauve.compute_mauve(p_features=p, q_features=q, seed=seed, verbose=False)
    return {
        "mauve": float(out.mauve),
        "mauve_star": float(out.mauve_star),
        "frontier_integral": float(out.frontier_integral),
        "frontier_integral_star": float(out.frontier_integral_star),
        "num_buckets": int(out.num_buckets),
    }


class BaseWeights:
    """Copies of the tensors training may change (W_Q/W_K and their biases, or the LoRA adapters), taken
    before training; `applied(model)` puts them back for a while, e.g. to featurise with the base model."""

    def __init__(self, model) -> None:
        from abft.models.lora import has_lora
        from abft.models.params import find_qk_slices

        if has_lora(model):
            names = {n for n, _ in model.named_parameters() if "lora_" in n}
        else:
            slices = find_qk_slices(model)
            names = {s.param for s in slices} | {s.bias for s in slices if s.bias}
        self.saved = {n: p.detach().clone() for n, p in model.named_parameters() if n in names}

    @contextlib.contextmanager
    def applied(self, model):
        params = dict(model.named_parameters())
        current = {n: params[n].detach().clone() for n in self.saved}
        with torch.no_grad():
            for n, value in self.saved.items():
                params[n].copy_(value)
        try:
            yield model
        finally:
            with torch.no_grad():
                for n, value in current.items():
                    params[n].copy_(value)


class MauveTest:
    """One prefix set, generated from and scored at each stage; see the module docstring."""

    def __init__(self, model, tokenizer, items: Sequence[PrefixItem], source: str, cfg, train: bool = True) -> None:
        self.tokenizer = tokenizer
        self.items = list(items)
        self.source = source
        self.ev = cfg.eval
        self.seed = cfg.seed
        self.base = BaseWeights(model) if train else None
        self.references = [t for t in (item.reference_text() for item in self.items) if t is not None]
        self.limits = [self._limit(item) for item in self.items]
        self.reference_features: np.ndarray | None = None
        self.before_features: np.ndarray | None = None

    def _limit(self, item: PrefixItem) -> int:
        """New tokens at most for `item`: its reference continuation's length in tokens, capped."""
        cap = self.ev.mauve_max_new_tokens
        full = item.reference_text()
        if full is None:
            return cap
        tokens = len(self.tokenizer(full)["input_ids"]) - len(self.tokenizer(item.prefix)["input_ids"])
        return max(1, min(cap, tokens))

    def _base(self, model):
        return self.base.applied(model) if self.base else contextlib.nullcontext(model)

    def features(self, model, texts: Sequence[str]) -> np.ndarray:
        """Features of `texts` with the base weights (see the module docstring)."""
        with self._base(model):
            return text_features(model, self.tokenizer, texts, POOLING, self.ev.eval_batch_size)

    def run(self, model, stage: str, run_dir: str | Path | None = None, log=print, timings: dict | None = None) -> dict:
        t = time.perf_counter()
        prefixes = [item.prefix for item in self.items]
        continuations, counts = generate_continuations(
            model,
            self.tokenizer,
            prefixes,
            self.ev.mauve_max_new_tokens,
            self.ev.mauve_decoding,
            self.seed,
            self.ev.eval_batch_size,
            limits=self.limits,
        )
        generated = [join(p, c) for p, c in zip(prefixes, continuations, strict=True)]
        if self.references and self.reference_features is None:
            self.reference_features = self.features(model, self.references)
        feats = self.features(model, generated)
        result: dict = {"mauve": None}
        if self.references:
            result.update(mauve_score(self.reference_features, feats))
        if stage == "after" and self.before_features is not None:
            result["vs_before"] = mauve_score(self.before_features, feats)
        if stage == "before":
            self.before_features = feats
        result.update(
            {
                "prefixes": len(prefixes),
                "references": len(self.references),
                "mean_new_tokens": float(np.mean(counts)) if counts else 0.0,
                "decoding": self.ev.mauve_decoding,
                "max_new_tokens": self.ev.mauve_max_new_tokens,
                "source": self.source,
                "features": f"base model final hidden state, {POOLING} token",
            }
        )
        if run_dir is not None:
            from abft.rundir import atomic_write

            lines = [
                json.dumps({"prefix": item.prefix, "reference": item.reference, "continuation": c}) + "\n"
                for item, c in zip(self.items, continuations, strict=True)
            ]
            atomic_write(Path(run_dir) / f"mauve_{stage}.jsonl", "".join(lines))
        if timings is not None:
            timings[f"{stage}_mauve_seconds"] = round(time.perf_counter() - t, 2)
        log(f"{stage:>6}: {summary(result)}")
        return result


def summary(result: dict) -> str:
    """One line for the log."""
    head = "MAUVE n/a (no references)" if result["mauve"] is None else f"MAUVE {result['mauve']:.4f}"
    if result["mauve"] is not None:
        head += f" (smoothed {result['mauve_star']:.4f})"
    if "vs_before" in result:
        head += f"  vs before fine-tuning {result['vs_before']['mauve']:.4f}"
    return (
        f"{head}  ({result['prefixes']} prefixes, {result['decoding']}, mean {result['mean_new_tokens']:.1f} "
        f"new tokens)"
    )


def prepare(model, tokenizer, dataset, cfg, train: bool = True) -> MauveTest | None:
    """Check the MAUVE options and build the prefix set before a run starts; None when not asked for."""
    ev = cfg.eval
    if not (ev.mauve_test or ev.mauve_prefix):
        return None
    for flag, value in (("--mauve-samples", ev.mauve_samples), ("--mauve-max-new-tokens", ev.mauve_max_new_tokens)):
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    if ev.mauve_decoding not in DECODINGS:
        raise UserError(f"--mauve-decoding must be one of {', '.join(DECODINGS)}, got {ev.mauve_decoding!r}")
    require_mauve()
    if ev.mauve_prefix:
        items = load_prefix_file(ev.mauve_prefix, ev.mauve_samples)
        source = str(ev.mauve_prefix)
        where = f"--mauve-prefix file {ev.mauve_prefix}"
    else:
        items = builtin_prefixes(dataset, ev.mauve_samples)
        source = f"built-in: {dataset.info.name} test split"
        where = f"{dataset.info.name}'s test split (texts of at least {MIN_WORDS} words); give --mauve-prefix FILE"
    items = [item for item in items if item.prefix]
    if len(items) < MIN_PREFIXES:
        raise UserError(f"--mauve-test needs at least {MIN_PREFIXES} non-empty prefixes, found {len(items)} in {where}")
    limit = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    if limit:
        longest = max(len(tokenizer(item.prefix)["input_ids"]) for item in items) + ev.mauve_max_new_tokens
        refs = [len(tokenizer(t)["input_ids"]) for t in (item.reference_text() for item in items) if t is not None]
        longest = max([longest, *refs])
        if longest > limit:
            raise UserError(
                f"a MAUVE text has {longest} tokens, more than the model's context of {limit}; "
                "use shorter prefixes or a lower --mauve-max-new-tokens"
            )
    return MauveTest(model, tokenizer, items, source, cfg, train)
