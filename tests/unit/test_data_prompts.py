"""PromptBuilder and Template on small byte-level BPE tokenizers built in-process (no model files)."""

from __future__ import annotations

import pytest

from abft import data as D
from abft.errors import UserError

WORDS = ("negative", "positive", "neutral")


def bpe_tokenizer(bos: bool = False, eos: bool = False, trim_offsets: bool = False):
    """Byte-level BPE that knows " negative", " positive", " neutral" and the bare words as single tokens;
    anything else falls apart into short pieces. Optionally adds a BOS / appends an EOS, and optionally
    trims the leading space off token offsets (as GPT-2's post-processor does)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [" " + " ".join(WORDS), " ".join(WORDS), "sentence: review: sentiment: label: the movie was"]
    tok.train_from_iterator(corpus * 20, trainer)
    steps = []
    if trim_offsets:
        steps.append(processors.ByteLevel(trim_offsets=True))
    if bos or eos:
        single = ("<s> " if bos else "") + "$A" + (" </s>" if eos else "")
        steps.append(processors.TemplateProcessing(single=single, special_tokens=[("<s>", 0), ("</s>", 1)]))
    if steps:
        tok.post_processor = processors.Sequence(steps)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="module")
def tok():
    return bpe_tokenizer()


TEMPLATE = D.Template("sentence: ", "sentiment: ")
DEMOS = [("a fine film ", 1), ("dull", 0), ("it is negative-ish", 2), ("ok", 1)]
QUERY = ("the end", 0)


def _check(builder, prompt, tok):
    assert prompt.demo_labels == [y for _, y in DEMOS] and prompt.gold == QUERY[1]
    assert len(prompt.label_positions) == len(DEMOS)
    assert prompt.label_positions == sorted(prompt.label_positions)
    for pos, y in zip(prompt.label_positions, prompt.demo_labels, strict=True):
        assert prompt.input_ids[pos] == builder.demo_label_token_ids[y]
        assert tok.decode([prompt.input_ids[pos]]) == " " + WORDS[y]


def test_space_mode(tok):
    b = D.PromptBuilder(tok, WORDS, TEMPLATE)
    p = b.build(DEMOS, QUERY)
    expected = (
        "sentence: a fine film  sentiment: positive\nsentence: dull sentiment: negative\n"
        "sentence: it is negative-ish sentiment: neutral\nsentence: ok sentiment: positive\n"
        "sentence: the end sentiment:"
    )
    assert p.text == expected
    assert p.input_ids == tok(expected)["input_ids"]
    assert b.label_token_ids == b.demo_label_token_ids
    assert [tok.decode([i]) for i in b.label_token_ids] == [" " + w for w in WORDS]
    _check(b, p, tok)
    # "negative" inside the third text is not a label position: the label after it is "neutral"
    assert tok.decode([p.input_ids[p.label_positions[2]]]) == " neutral"


def test_staicc_mode(tok):
    b = D.PromptBuilder(tok, WORDS, TEMPLATE, label_token_mode="staicc")
    p = b.build(DEMOS, QUERY)
    assert p.text == D.PromptBuilder(tok, WORDS, TEMPLATE).build(DEMOS, QUERY).text + " "
    assert p.text.endswith("sentiment: ")
    assert b.label_token_ids == [tok(w, add_special_tokens=False)["input_ids"][-1] for w in WORDS]
    # StaICC's scorer: the LAST token of the bare word, even when the bare word is several tokens
    pieces = [tok.decode([i]) for i in b.label_token_ids]
    assert all(w.endswith(piece) and piece for w, piece in zip(WORDS, pieces, strict=True))
    assert len(tok("positive", add_special_tokens=False)["input_ids"]) > 1  # this tokenizer splits it
    _check(b, p, tok)


@pytest.mark.parametrize("trim", [False, True])
def test_bos_shifts_positions_and_eos_is_dropped(trim):
    plain = D.PromptBuilder(bpe_tokenizer(trim_offsets=trim), WORDS, TEMPLATE).build(DEMOS, QUERY)
    with_bos = bpe_tokenizer(bos=True, trim_offsets=trim)
    assert with_bos("x")["input_ids"][0] == with_bos.bos_token_id
    b = D.PromptBuilder(with_bos, WORDS, TEMPLATE)
    p = b.build(DEMOS, QUERY)
    assert p.input_ids == [with_bos.bos_token_id] + plain.input_ids
    assert p.label_positions == [i + 1 for i in plain.label_positions]
    _check(b, p, with_bos)
    assert b.prefix_ids == [with_bos.bos_token_id]
    assert D.PromptBuilder(bpe_tokenizer(trim_offsets=trim), WORDS, TEMPLATE).prefix_ids == []
    both = bpe_tokenizer(bos=True, eos=True, trim_offsets=trim)
    assert both("x")["input_ids"][-1] == both.eos_token_id
    both_builder = D.PromptBuilder(both, WORDS, TEMPLATE)
    assert both_builder.prefix_ids == [both.bos_token_id]  # the appended EOS is not a prefix
    q = both_builder.build(DEMOS, QUERY)
    assert q.input_ids == p.input_ids  # the appended EOS is gone: the last position predicts the label


def test_multi_token_label_word_is_refused(tok):
    with pytest.raises(UserError, match=r"label word 'zebracorn' is \d+ tokens for this tokenizer; pick single"):
        D.PromptBuilder(tok, ("negative", "zebracorn"), TEMPLATE)


def test_label_split_in_context_is_refused(tok):
    # no space before the label word: in context "sentiment:negative" does not give the " negative" token
    b = D.PromptBuilder(tok, WORDS, D.Template("sentence: ", "sentiment:"), label_token_mode="staicc")
    with pytest.raises(UserError, match="label word 'positive'"):
        b.build(DEMOS, QUERY)
    with pytest.raises(UserError, match="does not end with a space"):
        D.PromptBuilder(tok, WORDS, D.Template("sentence: ", "sentiment:")).build(DEMOS, QUERY)


@pytest.mark.parametrize(
    "words, match",
    [
        (("negative", "negative"), "duplicate"),
        (("negative", " positive"), "outer spaces"),
        (("", "x"), "non-empty"),
    ],
)
def test_bad_label_words(tok, words, match):
    with pytest.raises(UserError, match=match):
        D.PromptBuilder(tok, words, TEMPLATE)


def test_bad_mode_and_slow_tokenizer(tok):
    with pytest.raises(UserError, match="label token mode"):
        D.PromptBuilder(tok, WORDS, TEMPLATE, label_token_mode="bare")

    class Slow:
        is_fast = False

    with pytest.raises(UserError, match="fast"):
        D.PromptBuilder(Slow(), WORDS, TEMPLATE)


def test_affixes_and_instruction(tok):
    for affix in ("\n", " ", "\t"):
        t = D.Template("text: ", "Label: ", affix, "Classify this. ")
        b = D.PromptBuilder(tok, WORDS, t)
        p = b.build(DEMOS[:2], QUERY)
        assert p.text == (
            f"Classify this. text: a fine film  Label: positive{affix}text: dull Label: negative{affix}"
            "text: the end Label:"
        )
        _check_positions_only(b, p, tok)


def _check_positions_only(b, p, tok):
    for pos, y in zip(p.label_positions, p.demo_labels, strict=True):
        assert tok.decode([p.input_ids[pos]]) == " " + WORDS[y]


def test_zero_shot_and_empty_query(tok):
    b = D.PromptBuilder(tok, WORDS, TEMPLATE)
    p = b.build([], ("", 2))
    assert p.text == "sentence:  sentiment:" and p.label_positions == [] and p.gold == 2
    assert b.build_many([]) == []


def test_build_many_matches_build(tok):  # its speed is a benchmark's business, not a test's
    b = D.PromptBuilder(tok, WORDS, TEMPLATE)
    examples = [([(f"text number {i} " * 5, i % 3)] * 4, (f"query {i}", (i + 1) % 3)) for i in range(64)]
    many = b.build_many(examples)
    assert all(many[i] == b.build(*examples[i]) for i in (0, 7, 63))


def test_template_render_spans():
    t = D.Template("in: ", "out: ", " | ", "Go. ")
    text, spans = t.render([("a", "x"), ("bb", "yy")], "q")
    assert text == "Go. in: a out: x | in: bb out: yy | in: q out: "
    assert [text[s:e] for s, e in spans] == ["x", "yy"]
    assert t.render([], "q", trailing_space=False)[0] == "Go. in: q out:"


def test_default_and_consistency_templates_for_user_data():
    info = D.DatasetInfo(-1, "mine", "", "input: ", "label: ", ("a", "b"), (1, 1, 1))
    assert D.default_template(info) == D.Template("input: ", "label: ", "\n", "")
    ts = D.consistency_templates(info)
    assert len(ts) == 9 and ts[0] == D.default_template(info) and len(set(ts)) == 9
