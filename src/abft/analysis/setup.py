"""The model and prompt builder of a configuration, one way for `abft run` (abft.runner) and every analysis.

    model, tokenizer, builder, dataset = load_setup(cfg)
    model, tokenizer, builder, _ = load_setup(cfg, dataset, fsdp=True)   # the runner

The runner passes the dataset it has loaded and checked (k against the demonstration pool), so that such a
mistake is refused before the slow part, the model.
"""

from __future__ import annotations

import torch

from .. import distributed
from ..config import ModelConfig, RunConfig
from ..data import Dataset, PromptBuilder, load_any
from ..models import load_model


def load_setup(cfg: RunConfig, dataset: Dataset | None = None, fsdp: bool = False):
    """(model, tokenizer, builder, dataset) of a configuration: the base model (4-bit with quantized) and cfg's
    dataset (`dataset` when the caller loaded it already) with its PromptBuilder (default template, cfg's
    label-token mode). `fsdp`: loaded for distributed.shard_model (_load)."""
    dataset = load_any(cfg.data.dataset) if dataset is None else dataset
    model, tokenizer = _load(cfg.model, fsdp)
    builder = PromptBuilder.for_dataset(tokenizer, dataset.info, cfg.data.label_token_mode)
    return model, tokenizer, builder, dataset


def _load(m: ModelConfig, fsdp: bool):
    """(model, tokenizer). With `fsdp` the whole model lives on the main process's CPU only (shard_model sends
    every process its share) and the others hold a meta model, read once the main process has converted or
    downloaded it; the dtype is then the run's (bf16 on a GPU machine), not the CPU's default."""
    if not fsdp:
        return load_model(m.model, m.device, m.dtype, m.quantized, m.trust_remote_code)
    dtype = m.dtype or ("bf16" if torch.cuda.is_available() else "fp32")
    trust = {"trust_remote_code": m.trust_remote_code}
    loaded = distributed.on_main(lambda: load_model(m.model, "cpu", dtype, **trust))
    return loaded if loaded is not None else load_model(m.model, "meta", dtype, **trust)
