"""The fore-test of an unchanged base model, reused across runs: `--reuse-fore-test`.

    key = fore_test_key(cfg, model, sets)   # sets: the run's prompt sets (suites.check_suites)
    before = load(key)      # None on a miss
    store(key, before)      # after computing it

Training runs that differ only in their training settings (ABFT vs E2E, a learning-rate or data-size sweep)
test the same base model on the same prompts; with the flag only the first of them pays for it. The key
hashes everything the `before` metrics depend on: the loaded weights (per-tensor sums), the test prompts'
token ids, the data, model and evaluation settings, the seed, and the code (abft's source files, the
versions of torch, transformers and StaICC). Any change is a miss, never a stale hit. Entries are the
`before` block of metrics.json with its digest, in $ABFT_CACHE/fore-test/<key>.json.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from .. import distributed
from ..models.loading import cache_root
from ..rundir import atomic_write

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


def load(key: str) -> dict | None:
    """The cached `before` block, or None: missing, unreadable or altered entries (their digest does not match
    their content, so a hand-edited or foreign file of the wrong shape) are misses, overwritten by `store`."""
    try:
        entry = json.loads(_path(key).read_text())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("before"), dict):
        return None
    return entry["before"] if entry.get("sha256") == _digest(entry["before"]) else None


def _digest(before: dict) -> str:
    return hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()


def store(key: str, before: dict) -> None:
    """Keep `before` for later runs; a cache that cannot be written only costs the next run its time."""
    path = _path(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps({"sha256": _digest(before), "before": before}) + "\n")
    except OSError:
        pass
