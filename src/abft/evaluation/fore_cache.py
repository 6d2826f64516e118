"""The fore-test of an unchanged base model, reused across runs: `--reuse-fore-test`.

    key = fore_test_key(cfg, model, sets)   # sets: the run's prompt sets (suites.check_suites)
    entry = load(key, cfg, golds, classes)  # None on a miss; BadEntry for an entry that does not fit
    store(key, before, probs)               # after computing it

Training runs that differ only in their training settings (ABFT vs E2E, a learning-rate or data-size sweep)
test the same base model on the same prompts; with the flag only the first of them pays for it. The key
hashes everything the `before` metrics depend on: the loaded weights (per-tensor sums), the test prompts'
token ids, the data, model and evaluation settings, the seed, and the code (abft's source files, the
versions of torch, transformers and StaICC). Any change is a miss, never a stale hit. Entries are the
`before` block of metrics.json and the normal test's per-prompt label distributions (predictions_before.jsonl)
with their digest, in $ABFT_CACHE/fore-test/<key>.json. The directory is the user's and its files anyone's, so
a read entry is checked before use (BadEntry): its digest, the probabilities' shape and values, their agreement
with the block's accuracy, and the fields the selected protocols' log lines read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from .. import distributed
from ..models.loading import cache_root
from ..rundir import atomic_write
from . import metrics, suites

# Settings that do not change the before metrics. (Runs with MAUVE never use the cache: their before
# generations belong to the run directory and their features to the after stage.)
_IGNORED = {"fore_test", "post_test", "reuse_fore_test", "train_samples"}


def _code_fingerprint() -> str:
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    for package in ("torch", "transformers", "StaICC"):
        try:
            digest.update(f"{package}={metadata.version(package)}".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{package}=none".encode())
    return digest.hexdigest()


SAMPLE = 4096  # values per tensor in the fingerprint's strided sample


@torch.no_grad()
def _weights_fingerprint(model: torch.nn.Module) -> list:
    """Per parameter and buffer: name, shape, dtype, float64 sum and absolute sum (no float64 copy of the
    tensor), and a strided sample of this process's values."""
    rows = []
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        t = tensor.detach()
        flat = distributed.local(t).reshape(-1)
        sample = flat[:: max(1, flat.numel() // SAMPLE)].double().tolist()
        sums = [float(t.sum(dtype=torch.float64)), float(t.abs().sum(dtype=torch.float64))]
        rows.append([name, list(t.shape), str(t.dtype), *sums, sample])
    return rows


def _prompts_digest(sets: dict) -> str:
    digest = hashlib.sha256()
    for key in sorted(sets):
        for name in sorted(sets[key]):
            prompt_set = sets[key][name]
            digest.update(f"{key}/{name}:{list(prompt_set.builder.label_token_ids)}".encode())
            for prompt in prompt_set.prompts:
                digest.update(np.asarray(prompt.input_ids, dtype=np.int64).tobytes())
                digest.update(np.asarray([*prompt.label_positions, -1, int(prompt.gold)], dtype=np.int64).tobytes())
    return digest.hexdigest()


def fore_test_key(cfg, model: torch.nn.Module, sets: dict) -> str:
    settings = {
        section: {k: v for k, v in dataclasses.asdict(getattr(cfg, section)).items() if k not in _IGNORED}
        for section in ("model", "data", "eval")
    }
    settings["seed"] = cfg.seed
    settings["lora"] = [cfg.train.lora_r, cfg.train.lora_alpha]  # adapters start at zero, but their maths runs
    digest = hashlib.sha256()
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    digest.update(_code_fingerprint().encode())
    digest.update(json.dumps(_weights_fingerprint(model)).encode())
    digest.update(model.config.to_json_string().encode())
    digest.update(_prompts_digest(sets).encode())
    return digest.hexdigest()[:32]


def _path(key: str) -> Path:
    return cache_root() / "fore-test" / f"{key}.json"


class BadEntry(ValueError):
    """A cache entry this code did not write for its key (edited, foreign, of another shape); str(): why."""


@dataclasses.dataclass(frozen=True)
class Entry:
    before: dict  # metrics.json's "before" block
    probs: np.ndarray | None  # (N, C) label distributions of the normal test's prompts; None: not selected


def load(key: str, cfg, golds: Sequence[int] | None, classes: int) -> Entry | None:
    """The cached fore-test of `key`, or None when there is none. `golds`: the normal test's gold labels (None
    when it is not selected), `classes`: the number of label words. Raises BadEntry for an entry that is
    unreadable or altered (its digest does not match its content), or does not fit this run."""
    path = _path(key)
    try:
        if not path.exists():
            return None
        regular = path.is_file()
    except OSError as exc:  # a cache directory this user may not search
        raise BadEntry(f"unreadable ({exc.__class__.__name__})") from None
    if not regular:  # a directory, or a FIFO that would block the read
        raise BadEntry("not a regular file")
    try:
        text = path.read_text()
    except (OSError, ValueError) as exc:  # unreadable, not UTF-8
        raise BadEntry(f"unreadable ({exc.__class__.__name__})") from None
    try:
        entry = json.loads(text)
        valid = isinstance(entry, dict) and isinstance(entry.get("before"), dict)
        valid = valid and entry.get("sha256") == _digest(entry["before"], entry.get("probs"))
    except (ValueError, RecursionError):  # not JSON, or nested too deep to hash
        valid = False
    if not valid:
        raise BadEntry("not JSON abft wrote, or edited since")
    before = entry["before"]
    probs = None if golds is None else _probs(entry.get("probs"), golds, classes, before)
    try:  # a digest anyone can compute proves nothing about shapes: the fields the run reads must be there
        suites.stage_lines(cfg, before)
        if cfg.eval.generalization_test:  # the run's in/out-of-domain table reads the block after training
            generalization = before["generalization"]
            suites.format_generalization_table(suites.generalization_table(generalization, generalization))
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError):  # 10**400: overflow
        raise BadEntry("its before block lacks fields of the selected tests") from None
    return Entry(before, probs)


def _probs(rows, golds: Sequence[int], classes: int, before: dict) -> np.ndarray:
    """`rows` as (len(golds), classes) label distributions whose accuracy and count are the block's."""
    n = len(golds)
    numbers = isinstance(rows, list) and len(rows) == n
    numbers = numbers and all(isinstance(r, list) and len(r) == classes for r in rows)
    if not (numbers and all(type(x) in (int, float) for r in rows for x in r)):  # no strings, bools or nulls
        raise BadEntry(f"its per-prompt probabilities are not {n} x {classes} numbers")
    try:
        probs = np.asarray(rows, dtype=np.float64)  # OverflowError: an integer beyond float64
        acc = metrics.accuracy(probs, np.asarray(golds, dtype=np.int64))
    except (ValueError, OverflowError):  # NaN, out of [0, 1], rows not summing to 1
        raise BadEntry("its per-prompt probabilities are not label distributions") from None
    if before.get("prompts") != n or before.get("accuracy") != acc:
        raise BadEntry("its per-prompt probabilities disagree with its accuracy")
    return probs


def _digest(before: dict, probs) -> str:
    return hashlib.sha256(json.dumps({"before": before, "probs": probs}, sort_keys=True).encode()).hexdigest()


def store(key: str, before: dict, probs: np.ndarray | None) -> None:
    """Keep `before` and the normal test's label distributions `probs` for later runs; a cache that cannot be
    written only costs the next run its time."""
    rows = None if probs is None else np.asarray(probs, dtype=np.float64).tolist()
    path = _path(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps({"sha256": _digest(before, rows), "before": before, "probs": rows}) + "\n")
    except OSError:
        pass
