"""The fore-test of an unchanged base model, reused across runs: `--reuse-fore-test`.

    key = fore_test_key(cfg, model, test_prompts)
    before = load(key)      # None on a miss
    store(key, before)      # after computing it

Training runs that differ only in their training settings (ABFT vs E2E, a learning-rate or data-size sweep)
test the same base model on the same prompts; with the flag only the first of them pays for it. The key
hashes everything the `before` metrics depend on: the loaded weights (per-tensor sums), the test prompts'
token ids, the data, model and evaluation settings, the seed, and the code (abft's source files, the
versions of torch, transformers and StaICC). Any change is a miss, never a stale hit. Entries are the
`before` block of metrics.json, in $ABFT_CACHE/fore-test/<key>.json.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from importlib import metadata
from pathlib import Path

import torch

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


@torch.no_grad()
def _weights_fingerprint(model: torch.nn.Module) -> list:
    """Name, shape, dtype and the float64 sum and absolute sum of every parameter and buffer."""
    rows = []
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        t = tensor.detach().double()
        rows.append([name, list(tensor.shape), str(tensor.dtype), float(t.sum()), float(t.abs().sum())])
    return rows


def fore_test_key(cfg, model: torch.nn.Module, test_prompts) -> str:
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
    for prompt in test_prompts:
        digest.update(json.dumps([list(prompt.input_ids), list(prompt.label_positions), int(prompt.gold)]).encode())
    return digest.hexdigest()[:32]


def _path(key: str) -> Path:
    return cache_root() / "fore-test" / f"{key}.json"


def load(key: str) -> dict | None:
    """The cached `before` block, or None (missing or unreadable entries are misses)."""
    try:
        return json.loads(_path(key).read_text())
    except (OSError, ValueError):
        return None


def store(key: str, before: dict) -> None:
    """Keep `before` for later runs; a cache that cannot be written only costs the next run its time."""
    path = _path(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(before) + "\n")
    except OSError:
        pass
