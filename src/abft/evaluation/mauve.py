"""MAUVE of generated continuations against reference continuations, before and after fine-tuning.

    test = prepare(model, tokenizer, dataset, cfg, base)   # None unless --mauve-test / --mauve-prefix
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
from functools import cached_property
from pathlib import Path

import numpy as np

from abft.errors import UserError, param
from abft.models.context import check_context
from abft.models.weights import BaseWeights
from abft.rundir import atomic_write

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

    @cached_property
    def reference_text(self) -> str | None:
        """The full reference text, prefix + continuation (see the module docstring); None without a reference."""
        if self.reference is None:
            return None
        return self.prefix + (self.reference if self.reference[:1].isspace() else " " + self.reference)


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
        raise UserError(f"cannot read {param('mauve_prefix')} file {path} ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise UserError(f"{param('mauve_prefix')} file {path} is not UTF-8 text") from None
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
            f"{param('mauve_test')} needs the mauve-text package (with faiss-cpu and scikit-learn; {missing} is "
            "missing): "
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


class MauveTest:
    """One prefix set, generated from and scored at each stage; see the module docstring."""

    def __init__(
        self, tokenizer, items: Sequence[PrefixItem], source: str, cfg, base: BaseWeights | None = None
    ) -> None:
        self.tokenizer = tokenizer
        self.items = list(items)
        self.source = source
        self.ev = cfg.eval
        self.seed = cfg.seed
        self.base = base  # the run's W_Q/W_K before training; None: the model is never trained
        # Each text is tokenised once, here: the prefixes for every stage's generation, the references for their
        # features, and both for the per-prefix limits and prepare's context check.
        self.prefix_ids = [tokenizer(item.prefix)["input_ids"] for item in self.items]
        references = [item.reference_text for item in self.items]
        reference_ids = [None if text is None else tokenizer(text)["input_ids"] for text in references]
        self.reference_ids = [ids for ids in reference_ids if ids is not None]
        # new tokens at most per prefix: its reference continuation's length in tokens, capped
        cap = self.ev.mauve_max_new_tokens
        self.limits = [
            cap if ref is None else max(1, min(cap, len(ref) - len(prefix)))
            for prefix, ref in zip(self.prefix_ids, reference_ids, strict=True)
        ]
        self.reference_features: np.ndarray | None = None
        self.before_features: np.ndarray | None = None

    def _base(self, model):
        return self.base.applied(model) if self.base else contextlib.nullcontext(model)

    def features(self, model, texts: Sequence[str | Sequence[int]]) -> np.ndarray:
        """Features of `texts` with the base weights (see the module docstring)."""
        with self._base(model):
            return text_features(model, self.tokenizer, texts, POOLING, self.ev.eval_batch_size)

    def run(self, model, stage: str, run_dir: str | Path | None = None, log=print, timings: dict | None = None) -> dict:
        t = time.perf_counter()
        continuations, counts = generate_continuations(
            model,
            self.tokenizer,
            self.prefix_ids,
            self.ev.mauve_max_new_tokens,
            self.ev.mauve_decoding,
            self.seed,
            self.ev.eval_batch_size,
            limits=self.limits,
        )
        generated = [item.prefix + c for item, c in zip(self.items, continuations, strict=True)]
        if self.reference_ids and self.reference_features is None:
            self.reference_features = self.features(model, self.reference_ids)
        feats = self.features(model, generated)
        result: dict = {"mauve": None}
        if self.reference_ids:
            result.update(mauve_score(self.reference_features, feats))
        if self.before_features is not None:  # only set by the before stage
            result["vs_before"] = mauve_score(self.before_features, feats)
        if stage == "before":
            self.before_features = feats
        result.update(
            {
                "prefixes": len(self.items),
                "references": len(self.reference_ids),
                "mean_new_tokens": float(np.mean(counts)) if counts else 0.0,
                "decoding": self.ev.mauve_decoding,
                "max_new_tokens": self.ev.mauve_max_new_tokens,
                "source": self.source,
                "features": f"base model final hidden state, {POOLING} token",
            }
        )
        if run_dir is not None:
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


def prepare(model, tokenizer, dataset, cfg, base: BaseWeights | None = None) -> MauveTest | None:
    """Check the MAUVE options and build the prefix set before a run starts; None when not asked for.

    --mauve-samples and --mauve-max-new-tokens are checked earlier, with the other sizes, by runner._validate."""
    ev = cfg.eval
    if not (ev.mauve_test or ev.mauve_prefix):
        return None
    if ev.mauve_decoding not in DECODINGS:
        raise UserError(f"{param('mauve_decoding')} must be one of {', '.join(DECODINGS)}, got {ev.mauve_decoding!r}")
    require_mauve()
    if ev.mauve_prefix:
        items = load_prefix_file(ev.mauve_prefix, ev.mauve_samples)
        source = str(ev.mauve_prefix)
        where = f"{param('mauve_prefix')} file {ev.mauve_prefix}"
    else:
        items = builtin_prefixes(dataset, ev.mauve_samples)
        source = f"built-in: {dataset.info.name} test split"
        where = f"{dataset.info.name}'s test split (texts of at least {MIN_WORDS} words)"
        where += f"; give {param('mauve_prefix', 'FILE')}"
    items = [item for item in items if item.prefix]
    if len(items) < MIN_PREFIXES:
        raise UserError(
            f"{param('mauve_test')} needs at least {MIN_PREFIXES} non-empty prefixes, found {len(items)} in {where}"
        )
    test = MauveTest(tokenizer, items, source, cfg, base)
    longest_generated = max(map(len, test.prefix_ids)) + ev.mauve_max_new_tokens  # a prefix and all its new tokens
    lengths = [longest_generated, *map(len, test.reference_ids)]
    check_context(model, lengths, "a MAUVE text", f"use shorter prefixes or a lower {param('mauve_max_new_tokens')}")
    return test
