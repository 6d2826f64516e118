"""Parity of abft.data with StaICC itself (the installed wheel is the oracle; src/abft never imports it).

StaICC's harness prints a lot and takes ~20 s to build, so it is built once for this module.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import pytest

from abft import data as D
from abft.errors import UserError

staicc = pytest.importorskip("StaICC")


@pytest.fixture(scope="module")
def oracle():
    """StaICC's own Normal benchmark at k = 4: one single_experimentor per dataset, in StaICC order."""
    from StaICC import normal

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bench = normal.Normal(k=4)
    return {info.name: exp for info, exp in zip(D.list_datasets(), bench.experimentor, strict=True)}


@pytest.fixture(scope="module")
def word_tokenizer():
    """A fast word-level tokenizer built in-process: byte-level pre-tokens, the StaICC label words (bare and
    space-prefixed) in the vocabulary, every other word [UNK]. Offsets work as in any fast tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for info in D.list_datasets() for w in info.label_words})
    vocab = {"[UNK]": 0}
    for w in words:
        vocab.setdefault(w, len(vocab))
        vocab.setdefault("\u0120" + w, len(vocab))  # byte-level "Ġword" = " word"
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def _row(table_row):
    texts, label = table_row
    assert len(texts) == 1
    return texts[0], label


@pytest.mark.parametrize("info", D.list_datasets(), ids=lambda i: i.name)
def test_split_equals_staicc(oracle, info):
    from StaICC.util import stable_random

    exp = oracle[info.name]
    trip = exp.triplet_dataset
    assert trip.get_dataset_name() == info.staicc_name
    assert trip.get_label_space() == list(info.label_words)
    ds = D.load_dataset(info.name)
    assert (len(trip.calibration), len(trip.demonstration), len(trip.test)) == info.split_sizes
    for ours, theirs in (
        (ds.calibration, trip.calibration),
        (ds.demonstration, trip.demonstration),
        (ds.test, trip.test),
    ):
        assert [ds.rows[i] for i in ours] == [_row(r) for r in theirs.table]
    # indices, bit-exact, from StaICC's own generator
    idx = stable_random.stable_random().sample_index_set(sum(info.split_sizes), len(ds.rows))
    assert ds.calibration + ds.demonstration + ds.test == idx


@pytest.mark.parametrize("info", D.list_datasets(), ids=lambda i: i.name)
def test_prompts_equal_staicc_writer(oracle, word_tokenizer, info):
    """All 1024 test prompts at k = 4, in StaICC's order, through our PromptBuilder (both modes)."""
    exp = oracle[info.name]
    ds = D.load_dataset(info)
    sets = D.demonstration_sets(ds, 4)
    pool = ds.demonstration
    assert sets == [[pool[i] for i in exp.demonstration_sampler[j]] for j in range(1024)]
    theirs = exp.prompt_set()
    pairs = D.test_pairs(ds, 4)
    tok = word_tokenizer
    template = D.default_template(info)
    space = D.PromptBuilder(tok, info.label_words, template).build_pairs(ds, pairs)
    exact = D.PromptBuilder(tok, info.label_words, template, "staicc").build_pairs(ds, pairs)
    assert len(theirs) == len(space) == len(exact) == 1024
    assert [p.text + " " for p in space] == theirs
    assert [p.text for p in exact] == theirs
    m = len(exp.triplet_dataset.test)
    assert [p.gold for p in space] == [
        exp.triplet_dataset.get_default_ground_truth_label_index(j % m) for j in range(1024)
    ]
    for p, q in zip(space, exact, strict=True):
        assert len(p.label_positions) == len(p.demo_labels) == 4
        assert p.label_positions == q.label_positions and p.input_ids == q.input_ids[: len(p.input_ids)]


@pytest.mark.parametrize("info", D.list_datasets(), ids=lambda i: i.name)
def test_consistency_templates_equal_staicc(oracle, info):
    """Our 9 templates are StaICC's _set_template(i) choices; their prompts equal StaICC's writer."""
    from StaICC.util import configs

    exp = oracle[info.name]
    alt = exp.triplet_dataset.get_alternate_template()
    ours = D.consistency_templates(info)
    assert list(D.L9_TABLE) == [tuple(r) for r in configs.STANDARD_SETTINGS["L9(3,4)_orthogonal_table"]]
    assert ours[0] == D.default_template(info)
    ds = D.load_dataset(info)
    pairs = D.test_pairs(ds, 4, n=100)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for t, row in enumerate(configs.STANDARD_SETTINGS["L9(3,4)_orthogonal_table"]):
                choice = {key: alt[key][row[i]] for i, key in enumerate(alt.keys())}  # StaICC's _set_template
                assert ours[t] == D.Template(
                    input_prefix=choice["input_text_prefixes"][0],
                    label_prefix=choice["label_prefix"],
                    label_affix=choice["label_affix"],
                    instruction=choice["instruction"],
                )
                exp.prompt_former.set_config_dict(choice)
                theirs = [exp.prompt_former.write_prompt(exp.demonstration_sampler[i], i) for i in range(100)]
                mine = [
                    ours[t].render([(ds.rows[d][0], info.label_words[ds.rows[d][1]]) for d in demos], ds.rows[q][0])[0]
                    for demos, q in pairs
                ]
                assert mine == theirs
    finally:
        exp.prompt_former.reset()


def test_consistency_protocols_use_first_queries():
    """StaICC's template test splits with 100 test rows and its demonstration test cuts to 128: both are
    prefixes of the standard split / sampler (checked on financial_phrasebank, the cheap one)."""
    from StaICC.util import experimentor, hgf_dataset_loader

    info = D.dataset_info("financial_phrasebank")
    ds = D.load_dataset(info)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tmpl = experimentor.template_sensitivity_experimentor(
            original_dataset=hgf_dataset_loader.financial_phrasebank(), k=4, dividing=[1024, 512, 100]
        )
        demo = experimentor.demonstration_sensitivity_experimentor(
            original_dataset=hgf_dataset_loader.financial_phrasebank(), k=4, dividing=[1024, 512, 512]
        )
        templates = D.consistency_templates(info)
        pairs = D.test_pairs(ds, 4, n=100)
        for t in range(9):
            tmpl._set_template(t)
            theirs = [tmpl._get_prompts_for_test_sample(i, 0) for i in range(100)]
            mine = [
                templates[t].render([(ds.rows[d][0], info.label_words[ds.rows[d][1]]) for d in demos], ds.rows[q][0])[0]
                for demos, q in pairs
            ]
            assert mine == theirs
        sets = D.demonstration_sets(ds, 4)
        template = D.default_template(info)
        for t in range(8):
            for i in (0, 77, 127):
                demos = [(ds.rows[d][0], info.label_words[ds.rows[d][1]]) for d in sets[i + 128 * t]]
                mine = template.render(demos, ds.rows[ds.test[i]][0])[0]
                assert demo._get_prompts_for_test_sample(i, t) == mine


def test_lcg_equals_stable_random():
    from StaICC.util import stable_random

    theirs, ours = stable_random.stable_random(), D.LCG()
    assert [theirs.get_float() for _ in range(1000)] == [ours.float() for _ in range(1000)]
    for n, N, rep in [(4, 4096, False), (300, 1000, False), (1000, 1000, False), (7, 3, True), (0, 5, False)]:
        a, b = stable_random.stable_random(), D.LCG()
        for _ in range(3):
            assert b.sample_index_set(n, N, rep) == a.sample_index_set(n, N, rep)


def test_demonstration_sets_with_repetition_when_k_exceeds_pool():
    from StaICC.util import dataset_interface

    ds = D.Dataset(D.dataset_info(0), [("x", 0)] * 10, [0], [3, 4, 5], [6, 7])
    sampler = dataset_interface.demonstration_sampler(5, 3, 20)
    assert D.demonstration_sets(ds, 5, 20) == [[ds.demonstration[i] for i in sampler[j]] for j in range(20)]


@pytest.mark.parametrize(
    "alias, index",
    [("sst2", 0), ("SST-2", 0), ("GLUE-SST2", 0), ("glue_sst2", 0), (0, 0), ("0", 0), ("MR", 1),
     ("Rotten Tomatoes", 1), ("financial_phrasebank", 2), ("SST5", 3), ("trec", 4), ("AGNews", 5),
     ("ag_news", 5), ("subjective", 6), ("Tweet_Eval_Emotion", 7), ("tweet-eval-hate", 8), ("9", 9)],
)  # fmt: skip
def test_dataset_info_aliases(alias, index):
    assert D.dataset_info(alias).index == index


@pytest.mark.parametrize("bad", ["sst3", "", "10", 10, -1, True, None, "imdb"])
def test_dataset_info_unknown(bad):
    with pytest.raises(UserError, match="unknown dataset.*sst2.*hate_speech_18"):
        D.dataset_info(bad)


def test_registry():
    infos = D.list_datasets()
    assert [i.index for i in infos] == list(range(10))
    assert D.PAPER_DATASETS == tuple(infos[i].name for i in (0, 1, 2, 3, 4, 6, 7, 8))
    assert {i.name for i in infos} == {p.name.removesuffix(".dataset") for p in _data_files()}
    assert D.load_dataset("sst2") is D.load_dataset(0)  # cached


def _data_files():
    from abft.data.staicc import staicc_data_dir

    return list(staicc_data_dir().glob("*.dataset"))
