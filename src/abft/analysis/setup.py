"""The model and prompts of an analysis, as `abft run` builds them (abft.runner loads the same way, with the
FSDP and LoRA variants a run also needs)."""

from __future__ import annotations

from ..config import RunConfig
from ..data import PromptBuilder, load_any
from ..models import load_model


def load_setup(cfg: RunConfig):
    """(model, tokenizer, builder, dataset) of a configuration: the base model (4-bit with --quantized) and
    cfg's dataset with its PromptBuilder (default template, cfg's label-token mode)."""
    dataset = load_any(cfg.data.dataset)
    m = cfg.model
    model, tokenizer = load_model(m.model, m.device, m.dtype, m.quantized, m.trust_remote_code)
    builder = PromptBuilder.for_dataset(tokenizer, dataset.info, cfg.data.label_token_mode)
    return model, tokenizer, builder, dataset
