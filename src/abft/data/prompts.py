"""Prompt building: token ids, the positions of the demonstrations' label tokens, and the gold label.

    builder = PromptBuilder(tokenizer, info.label_words, default_template(info))     # mode "space"
    prompts = builder.build_pairs(dataset, test_pairs(dataset, k=4))               # 1024 in < 1 s
    p = prompts[0]; p.input_ids[p.label_positions[0]] == builder.label_token_ids[p.demo_labels[0]]

Tokenisation decision (label_token_mode)
----------------------------------------
"space" (default): the prompt text is StaICC's prompt WITHOUT its final trailing space (it ends
"... sentiment:"), and the label token of word w is the single token of " " + w. A demonstration's
label word follows a space in the text too, so a BPE tokenizer gives the same space-prefixed token
(" negative") at every demonstration label position and as the prediction target at the last position.
The attention target of ABFT and the scored token are then literally the same token id.

"staicc": the exact StaICC text (ending with the trailing space "... sentiment: "); the prediction token
of word w is the LAST token of w tokenised alone without special tokens (StaICC's scorer, which reads
`tokenizer(w).input_ids[-1]`; identical unless a tokenizer appends an EOS). Demonstration positions are
the token covering the word in context (usually " negative"), so `demo_label_token_ids` may differ from
`label_token_ids`. With SmolLM2 "sports", "sad" and "hate" alone are 2 tokens: StaICC scores "orts",
"ad", "ate" and so does this mode.

Label positions are found by tokenising the whole prompt once (batched, fast tokenizers only,
return_offsets_mapping) and taking the one token whose character span covers the label word. Every
label must be one token: UserError when a label word is several tokens alone or in the prompt, or when
the token found in the prompt is not the expected label token. Special tokens the tokenizer adds in
front (a BOS) stay in input_ids and shift the positions; special tokens it appends (an EOS) are
dropped, so the last position always predicts the label.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import TYPE_CHECKING

from abft.errors import UserError

from .templates import Template, default_template

if TYPE_CHECKING:
    from .staicc import Dataset

MODES = ("space", "staicc")
_END = itemgetter(1)


@dataclass
class Prompt:
    input_ids: list[int]
    label_positions: list[int]  # token positions of the k demonstration label tokens, in order
    demo_labels: list[int]  # label index of each demonstration
    gold: int  # query label index
    text: str


class PromptBuilder:
    @classmethod
    def for_dataset(cls, tokenizer, info, label_token_mode: str = "space") -> PromptBuilder:
        """The builder every command uses for a dataset: its label words and default template."""
        return cls(tokenizer, info.label_words, default_template(info), label_token_mode)

    def __init__(self, tokenizer, label_words: Sequence[str], template: Template, label_token_mode: str = "space"):
        if label_token_mode not in MODES:
            raise UserError(f"unknown label token mode {label_token_mode!r}; choose one of {', '.join(MODES)}")
        if not getattr(tokenizer, "is_fast", False):
            raise UserError("this tokenizer is not a fast (Rust) tokenizer; load it with use_fast=True")
        words = tuple(label_words)
        if len(words) < 1 or any(not isinstance(w, str) or not w or w != w.strip() for w in words):
            raise UserError(f"label words {list(words)} must be non-empty words without outer spaces")
        if len(set(words)) != len(words):
            raise UserError(f"label words {list(words)} contain a duplicate; make each label word unique")
        self.tokenizer = tokenizer
        self.label_words = words
        self.template = template
        self.mode = label_token_mode
        self.demo_label_token_ids = [self._spaced_token(w) for w in words]
        if self.mode == "space":
            self.label_token_ids = list(self.demo_label_token_ids)
        else:
            self.label_token_ids = [self._bare_last_token(w) for w in words]
        for ids in (self.label_token_ids, self.demo_label_token_ids):
            if len(set(ids)) != len(ids):
                dup = [w for w, i in zip(words, ids, strict=True) if ids.count(i) > 1]
                raise UserError(f"label words {dup} share one token for this tokenizer; pick distinct words")
        self._special = set(getattr(tokenizer, "all_special_ids", []) or [])

    @functools.cached_property
    def prefix_ids(self) -> list[int]:
        """Special tokens the tokenizer puts in front of every prompt (a BOS), [] for most BPE tokenizers."""
        plain = self._ids("x")
        full = list(self.tokenizer("x", add_special_tokens=True)["input_ids"])
        return full[: len(full) - len(plain)] if full[-len(plain) :] == plain else full[: full.index(plain[0])]

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _spaced_token(self, word: str) -> int:
        """The single token of " " + word (alone, or after the label prefix for tokenizers such as
        SentencePiece ones that add a dummy prefix space to a text's start)."""
        alone = self._ids(" " + word)
        if len(alone) == 1:
            return alone[0]
        head = self.template.label_prefix.rstrip() or "label:"
        before, after = self._ids(head), self._ids(head + " " + word)
        if after[: len(before)] == before and len(after) == len(before) + 1:
            return after[-1]
        n = max(len(alone), len(after) - len(before))
        raise UserError(f"label word {word!r} is {n} tokens for this tokenizer; pick single-token label words")

    def _bare_last_token(self, word: str) -> int:
        ids = self._ids(word)
        if not ids:
            raise UserError(f"label word {word!r} gives no tokens for this tokenizer; pick another word")
        return ids[-1]

    def render(self, demos: Sequence[tuple[str, int]], query: tuple[str, int]) -> tuple[str, list[tuple[int, int]]]:
        for _, y in demos:
            if not 0 <= y < len(self.label_words):
                raise ValueError(f"demonstration label {y} outside 0..{len(self.label_words) - 1}")
        pairs = [(t, self.label_words[y]) for t, y in demos]
        return self.template.render(pairs, query[0], trailing_space=self.mode == "staicc")

    def build(self, demos: Sequence[tuple[str, int]], query: tuple[str, int]) -> Prompt:
        return self.build_many([(demos, query)])[0]

    def build_pairs(self, dataset: Dataset, pairs: Sequence[tuple[Sequence[int], int]]) -> list[Prompt]:
        """Prompts for (demo row indices, query row index) pairs such as test_pairs / train_pairs give."""
        rows = dataset.rows
        return self.build_many([([rows[i] for i in demos], rows[q]) for demos, q in pairs])

    def build_many(self, examples: Sequence[tuple[Sequence[tuple[str, int]], tuple[str, int]]]) -> list[Prompt]:
        """Prompts for ([(demo text, label)], (query text, label)) examples, tokenised in one batch."""
        rendered = [self.render(demos, query) for demos, query in examples]
        if not rendered:
            return []
        texts = [t for t, _ in rendered]
        enc = self.tokenizer(texts, add_special_tokens=True, return_offsets_mapping=True)
        out = []
        for (demos, query), (text, spans), ids, offsets in zip(
            examples, rendered, enc["input_ids"], enc["offset_mapping"], strict=True
        ):
            ids, offsets = list(ids), list(offsets)
            while ids and ids[-1] in self._special and offsets[-1][0] == offsets[-1][1]:
                ids.pop()  # an appended EOS: the last position must be the prompt's end
                offsets.pop()
            labels = [y for _, y in demos]
            positions = self._positions(text, spans, labels, ids, offsets)
            out.append(Prompt(ids, positions, labels, query[1], text))
        return out

    def _positions(self, text, spans, labels, ids, offsets) -> list[int]:
        positions = []
        t = 0
        for (ws, we), y in zip(spans, labels, strict=True):
            t = bisect.bisect_right(offsets, ws, lo=t, key=_END)  # first token ending after the word start
            while t < len(offsets) and offsets[t][0] == offsets[t][1]:
                t += 1  # zero-width (special) tokens
            cover = []
            while t + len(cover) < len(offsets) and offsets[t + len(cover)][0] < we:
                cover.append(t + len(cover))
            word = self.label_words[y]
            if len(cover) != 1:
                pieces = [text[offsets[i][0] : offsets[i][1]] for i in cover]
                raise UserError(
                    f"label word {word!r} is {len(cover)} tokens in the prompt {pieces}; pick single-token "
                    "label words or another template"
                )
            p = cover[0]
            if ids[p] != self.demo_label_token_ids[y]:
                got = self.tokenizer.convert_ids_to_tokens(ids[p])
                want = self.tokenizer.convert_ids_to_tokens(self.demo_label_token_ids[y])
                raise UserError(
                    f"label word {word!r} is tokenised as {got!r} in the prompt, not as its label token "
                    f"{want!r}; pick another template (label prefix / affix) or label word"
                )
            positions.append(p)
            t = p + 1
        return positions
