"""Prompt templates: StaICC's default one and the 9 of its template-consistency test.

A prompt is written exactly as StaICC's `prompt_writter` (direct, not noisy-channel) writes it:

    instruction                                                   (once, at the very start; "" default)
    + for each demonstration: input_prefix + text + " " + label_prefix + label_word + label_affix
    + input_prefix + query_text + " " + label_prefix

The " " after a text is StaICC's input affix (fixed); there is no separator besides the label affix, and
the instruction is followed directly by the first input prefix. `render(..., trailing_space=False)`
drops the final character of the prompt, which must be the space that ends the label prefix (our
default "space" label-token mode; see abft.data.prompts).

The template-consistency test takes 9 templates from the L9(3^4) orthogonal array over (instruction,
input prefix, label prefix, label affix); the alternates per dataset are StaICC's (restated below).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from abft.errors import UserError

from .staicc import DatasetInfo

L9_TABLE: tuple[tuple[int, int, int, int], ...] = (
    (0, 0, 0, 0), (0, 1, 1, 1), (0, 2, 2, 2),
    (1, 0, 1, 2), (1, 1, 2, 0), (1, 2, 0, 1),
    (2, 0, 2, 1), (2, 1, 0, 2), (2, 2, 1, 0),
)  # fmt: skip

_MOVIE = "How would you describe the overall feeling of the movie based on this sentence? "
_HATE = ("Does this sentence contain hate speech? ", "Is this sentence an example of hate speech? ")
# dataset name -> (two alternate instructions, two alternate input prefixes); the first option of each
# factor is the dataset's own ("" instruction, own input prefix).
_ALTERNATES: dict[str, tuple[tuple[str, str], tuple[str, str]]] = {
    "sst2": ((_MOVIE, "Please classify the sentiment of the following sentence. "), ("text: ", "review: ")),
    "rotten_tomatoes": (
        (_MOVIE, "Please classify the sentiment of the following sentence. "),
        ("text: ", "sentence: "),
    ),
    "financial_phrasebank": (
        (
            "What is the attitude towards the financial news in this sentence? ",
            "What is the emotional response to the financial news in this sentence? ",
        ),
        ("text: ", "news: "),
    ),
    "sst5": ((_MOVIE, "What mood does this sentence convey about the movie? "), ("text: ", "review: ")),
    "trec": (
        ("What is the topic of the question? ", "What is the primary focus of this question? "),
        ("text: ", "sentence: "),
    ),
    "agnews": (
        ("What is the topic of the news? ", "What is the news focused on? "),
        ("text: ", "sentence: "),
    ),
    "subjective": (
        (
            "Does this sentence reflect a personal opinion? ",
            "Is this sentence expressing a personal opinion or stating a fact? ",
        ),
        ("text: ", "sentence: "),
    ),
    "tweet_eval_emotion": (
        ("What feeling does this sentence convey? ", "What emotion does this sentence express? "),
        ("text: ", "sentence: "),
    ),
    "tweet_eval_hate": (_HATE, ("text: ", "sentence: ")),
    "hate_speech_18": (_HATE, ("text: ", "sentence: ")),
}
# Our choice for user datasets (StaICC has none): generic instructions, the usual prefixes.
_GENERIC = (
    ("Classify the following input. ", "What is the label of the following input? "),
    ("text: ", "sentence: "),
)
_LABEL_PREFIXES = ("label: ", "Label: ")
_LABEL_AFFIXES = ("\n", " ", "\t")


@dataclass(frozen=True)
class Template:
    input_prefix: str
    label_prefix: str
    label_affix: str = "\n"
    instruction: str = ""

    def render(
        self, demos: Sequence[tuple[str, str]], query: str, trailing_space: bool = True
    ) -> tuple[str, list[tuple[int, int]]]:
        """Prompt text for (demo text, label word) pairs and a query text, plus the character span
        [start, end) of each demonstration's label word. trailing_space=False drops the label prefix's
        final space at the end of the prompt (UserError if the label prefix does not end in a space)."""
        parts = [self.instruction]
        pos = len(self.instruction)
        spans = []
        head = " " + self.label_prefix
        for text, word in demos:
            parts += [self.input_prefix, text, head, word, self.label_affix]
            pos += len(self.input_prefix) + len(text) + len(head)
            spans.append((pos, pos + len(word)))
            pos += len(word) + len(self.label_affix)
        parts += [self.input_prefix, query, head]
        text = "".join(parts)
        if not trailing_space:
            if not self.label_prefix.endswith(" "):
                raise UserError(
                    f"label prefix {self.label_prefix!r} does not end with a space, which the 'space' "
                    "label-token mode moves onto the label word; add the space or use mode 'staicc'"
                )
            text = text[:-1]
        return text, spans


def default_template(info: DatasetInfo) -> Template:
    """StaICC's default template: no instruction, own prefixes, label affix "\\n"."""
    return Template(info.input_prefix, info.label_prefix)


def consistency_templates(info: DatasetInfo) -> list[Template]:
    """The 9 templates of StaICC's template-consistency test, in StaICC's order (rows of L9_TABLE).
    Template 0 is the default template."""
    instr, inputs = _ALTERNATES.get(info.name, _GENERIC) if info.index >= 0 else _GENERIC
    instructions = ("", *instr)
    input_prefixes = (info.input_prefix, *inputs)
    label_prefixes = (info.label_prefix, *_LABEL_PREFIXES)
    return [
        Template(input_prefixes[b], label_prefixes[c], _LABEL_AFFIXES[d], instructions[a]) for a, b, c, d in L9_TABLE
    ]
