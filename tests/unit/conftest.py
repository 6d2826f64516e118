import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import pytest
import torch

# Tiny models: thread start-up costs more than it saves, and CI shares 2 cores.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_word_model_dir(tmp_path_factory):
    """A tiny random Llama (GQA) saved with the in-process word-level tokenizer: `abft` runs on it end to end."""
    import tiny_tokenizer
    from tiny_models import tiny_llama

    path = tmp_path_factory.mktemp("tiny-model")
    tiny_llama(attn_implementation="sdpa", max_position_embeddings=512).save_pretrained(path)
    tiny_tokenizer.word_tokenizer().save_pretrained(path)
    return path
