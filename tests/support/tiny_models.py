"""Tiny random Hugging Face causal LMs built in-process (no downloads), for fast unit tests.

Every builder is seeded, returns an fp32 model in eval mode and accepts ``attn_implementation``
("eager", "sdpa", or a registered custom name) plus keyword overrides of the config fields.
The architectures cover the attention variants the project must handle:

- ``tiny_llama``:  grouped-query attention (4 query heads, 2 key/value heads), rotary positions.
- ``tiny_qwen2``:  grouped-query attention with q/k/v biases (randomised, so they matter).
- ``tiny_gemma3``: multi-query attention (1 key/value head), q/k RMS norms, a sliding window of 4
  on layer 0 and full attention on layer 1, ``query_pre_attn_scalar`` scaling.
- ``tiny_gpt2``:   multi-head attention through the fused ``c_attn`` Conv1D, learned positions;
  ``scale_attn_by_inverse_layer_idx`` can be switched on to give each layer its own scaling.

``snapshot(model)`` copies every parameter, to compare a model before and after training.

Weights use a larger init (std 0.2) than Hugging Face's default so the attention is peaked and
not near-uniform; all biases get small random values.
"""

from __future__ import annotations

import torch
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

VOCAB_SIZE = 100
NUM_LAYERS = 2
NUM_HEADS = 4
HIDDEN = 32
GEMMA_SLIDING_WINDOW = 4


def _build(model_cls, config, attn_implementation: str, seed: int):
    torch.manual_seed(seed)
    model = model_cls._from_config(config, attn_implementation=attn_implementation, dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.normal_(0.0, 0.1)
    return model.eval()


def _llama_like_fields(overrides: dict) -> dict:
    fields = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=2,
        max_position_embeddings=128,
        initializer_range=0.2,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=True,
    )
    fields.update(overrides)
    return fields


def tiny_llama(attn_implementation: str = "eager", seed: int = 0, **overrides):
    return _build(LlamaForCausalLM, LlamaConfig(**_llama_like_fields(overrides)), attn_implementation, seed)


def tiny_qwen2(attn_implementation: str = "eager", seed: int = 0, **overrides):
    return _build(Qwen2ForCausalLM, Qwen2Config(**_llama_like_fields(overrides)), attn_implementation, seed)


def tiny_gemma3(attn_implementation: str = "eager", seed: int = 0, **overrides):
    gemma = dict(
        num_key_value_heads=1,  # multi-query
        head_dim=8,
        query_pre_attn_scalar=16,
        sliding_window=GEMMA_SLIDING_WINDOW,
        layer_types=["sliding_attention", "full_attention"],
        bos_token_id=2,
        eos_token_id=1,
    )
    fields = _llama_like_fields({**gemma, **overrides})
    return _build(Gemma3ForCausalLM, Gemma3TextConfig(**fields), attn_implementation, seed)


def tiny_gpt2(attn_implementation: str = "eager", seed: int = 0, **overrides):
    fields = dict(
        vocab_size=VOCAB_SIZE,
        n_positions=128,
        n_embd=HIDDEN,
        n_layer=NUM_LAYERS,
        n_head=NUM_HEADS,
        n_inner=64,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        initializer_range=0.2,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    fields.update(overrides)
    return _build(GPT2LMHeadModel, GPT2Config(**fields), attn_implementation, seed)


BUILDERS = {
    "llama": tiny_llama,
    "qwen2": tiny_qwen2,
    "gemma3": tiny_gemma3,
    "gpt2": tiny_gpt2,
}


def snapshot(model) -> dict[str, torch.Tensor]:
    """{name: a detached copy} of every parameter."""
    return {n: p.detach().clone() for n, p in model.named_parameters()}
