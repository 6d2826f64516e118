"""Shared by every tier (unit/, parity/, e2e/, integration/; DESIGN.md "Tests"): tests/support on sys.path (the tiny
models, the word-level tokenizer, the toy dataset, fake prompts), one torch thread, a private $ABFT_CACHE per test,
and the fixtures of the tiny models."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "support"))

import pytest
import torch

# Tiny models: thread start-up costs more than it saves, and CI shares 2 cores.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """$ABFT_CACHE in a fresh directory per test: no fore-test cache entry leaks from one test into another."""
    path = tmp_path_factory.mktemp("abft-cache")
    monkeypatch.setenv("ABFT_CACHE", str(path))
    return path


@pytest.fixture(scope="module")
def tok():
    """The tiny word-level tokenizer (support/tiny_tokenizer.py), one per module. A module that needs another
    tokenizer defines its own `tok`."""
    from tiny_tokenizer import word_tokenizer

    return word_tokenizer()


@pytest.fixture(scope="module")
def model():
    """A tiny random Llama (GQA, eager attention, context 512) that fits `tok`, one per module: a test that trains
    builds its own."""
    from tiny_models import tiny_llama

    return tiny_llama(max_position_embeddings=512)


@pytest.fixture(scope="session")
def tiny_word_model_dir(tmp_path_factory):
    """A tiny random Llama (GQA) saved with the in-process word-level tokenizer: `abft` runs on it end to end."""
    import tiny_tokenizer
    from tiny_models import tiny_llama

    path = tmp_path_factory.mktemp("tiny-model")
    tiny_llama(attn_implementation="sdpa", max_position_embeddings=512).save_pretrained(path)
    tiny_tokenizer.word_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory):
    """reviews.csv, 400 rows of the tiny word tokenizer's words: calibration 72, demonstration 292, test 36."""
    from toy_dataset import toy_csv

    path = tmp_path_factory.mktemp("data") / "reviews.csv"
    path.write_text(toy_csv(400))
    return path


@pytest.fixture
def patch_runner(monkeypatch):
    """Factory: make `abft run` / `evaluate` / `sweep` in this test use a tiny random Llama and the toy dataset,
    with no progress bars and no HTML report (matplotlib is slow). Returns the list of models loaded so far.

        loads = patch_runner()                                     # a fresh tiny Llama for every run
        patch_runner(model=model, tokenizer=tok, dataset=ds)       # always these
    """
    from abft import runner
    from abft.analysis import setup

    def patch(model=None, tokenizer=None, dataset=None) -> list:
        from tiny_models import tiny_llama
        from tiny_tokenizer import word_tokenizer
        from toy_dataset import toy

        tok = tokenizer if tokenizer is not None else word_tokenizer()
        loads = []

        def load_model(*args, **kwargs):
            loads.append(model if model is not None else tiny_llama(max_position_embeddings=512))
            return loads[-1], tok

        monkeypatch.setattr(setup, "load_model", load_model)  # the runner loads through analysis.setup
        monkeypatch.setattr(runner, "load_any", lambda spec: dataset if dataset is not None else toy(n_cal=16))
        monkeypatch.setenv("ABFT_NO_PROGRESS", "1")
        monkeypatch.setattr("abft.report.html.write_report", lambda path: Path(path) / "report.html")
        return loads

    return patch
