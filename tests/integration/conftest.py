import os

import pytest

os.environ.setdefault("ABFT_NO_PROGRESS", "1")


@pytest.fixture(autouse=True)
def private_cache():
    """Not private in this tier: the user's $ABFT_CACHE, where the real model's GGUF conversion (about 20 s alone,
    80 s on a busy 2-core machine, 517 MB) is made once, not once per test. No integration test reuses fore-test
    metrics, the entries that private_cache keeps apart in the other tiers."""
    from abft.models.loading import cache_root

    return cache_root()


@pytest.fixture(scope="session")
def embedded():
    """The real embedded model and tokenizer, loaded once per session."""
    from abft.models import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, embedded):
    """A tiny random Llama (GQA) with the embedded model's tokenizer, saved as a local model directory:
    the CLI runs end to end on it in seconds."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    _, tokenizer = embedded
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
    )
    path = tmp_path_factory.mktemp("tiny-model")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
