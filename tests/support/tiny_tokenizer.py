"""A tiny fast word-level tokenizer built in-process, whose ids fit the tiny models (vocabulary < 100).

Words are split on whitespace and punctuation (`tokenizers` Whitespace pre-tokenizer); the vocabulary holds
every StaICC label word, the prompt-prefix words and `w0`..`w19` for synthetic texts; anything else is
[UNK]. Offsets work as in any fast tokenizer, so PromptBuilder finds label positions with it.
"""

from __future__ import annotations

from abft.data import list_datasets

SPECIALS = ("[PAD]", "[BOS]", "[EOS]", "[UNK]")  # ids 0..3: the tiny models' pad / bos / eos ids are 0 / 1 / 2
PREFIX_WORDS = (":", "sentence", "sentiment", "label", "Label", "text", "review", "question", "target", "N", "/", "A")
SYNTHETIC_WORDS = tuple(f"w{i}" for i in range(20))


def word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for info in list_datasets() for w in info.label_words})
    vocab: dict[str, int] = {}
    for w in (*SPECIALS, *words, *PREFIX_WORDS, *SYNTHETIC_WORDS):
        vocab.setdefault(w, len(vocab))
    assert len(vocab) <= 100, len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]", unk_token="[UNK]"
    )
