"""The prompt sets of the evaluation protocols: PromptBuilder over variants.py's samplers.

    sets = PromptSets(tokenizer, cfg)       # --k, --test-samples, --label-token-mode
    bias_sets(sets, dataset)                # {"normal": PromptSet, "contextual": ..., "noise 0": ..., ...}

Each `*_sets(sets, dataset)` returns {set name: PromptSet}. One PromptSets builds each distinct set once:
the normal test prompts (the runner's own, given with use_normal) are reused by the normal, template,
generalization, unseen-label, bias and calibration sets, and a constant-query variant by every protocol
that needs it (the empty query is both the contextual-bias set and a content-free one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from abft.data import (
    PAPER_DATASETS,
    Dataset,
    PromptBuilder,
    Template,
    consistency_templates,
    default_template,
    load_dataset,
    test_pairs,
    validation_pairs,
)

from .calibration import CONTENT_FREE_INPUTS
from .calibration_methods import CALIBRATIONS
from .metrics import LABEL_NOISE_CORRECT_RATIOS
from .variants import demo_consistency_pairs, domain_queries, unseen_label_pairs, wrong_label_positions

TEMPLATE_QUERIES = 100


@dataclass(frozen=True)
class PromptSet:
    """Prompts built with one builder, and what the protocol needs to know about them."""

    builder: PromptBuilder
    prompts: list
    template: Template | None = None  # the template test: the template of these prompts
    wrong: int | None = None  # a label-noise set: wrong demonstration labels per prompt


class PromptSets:
    """Builds prompt sets for one configuration, each distinct one once (see the module docstring)."""

    def __init__(self, tokenizer, cfg) -> None:
        self.tokenizer, self.cfg = tokenizer, cfg
        self.k, self.n = cfg.data.k, cfg.data.test_samples
        self._memo: dict = {}

    def builder(self, info, template: Template | None = None) -> PromptBuilder:
        template = template or default_template(info)
        return PromptBuilder(self.tokenizer, info.label_words, template, self.cfg.data.label_token_mode)

    def _once(self, what: tuple, dataset: Dataset, build: Callable):
        key = (*what, id(dataset))
        if key not in self._memo:
            self._memo[key] = (dataset, build())  # holding `dataset` keeps its id from being reused
        return self._memo[key][1]

    def pairs(self, dataset: Dataset) -> list:
        """test_pairs(dataset, --k, --test-samples)."""
        return self._once(("pairs",), dataset, lambda: test_pairs(dataset, self.k, self.n))

    def normal(self, dataset: Dataset) -> PromptSet:
        """The normal test prompts of `dataset` (default template, test_pairs)."""

        def build() -> PromptSet:
            builder = self.builder(dataset.info)
            return PromptSet(builder, builder.build_pairs(dataset, self.pairs(dataset)))

        return self._once(("normal",), dataset, build)

    def use_normal(self, dataset: Dataset, builder: PromptBuilder, prompts: Sequence) -> None:
        """Take `prompts` (built by `builder` from test_pairs with the same --k and --test-samples) as the
        normal test prompts of `dataset` instead of building them again."""
        self._memo[("normal", id(dataset))] = (dataset, PromptSet(builder, list(prompts)))

    def with_query(self, dataset: Dataset, text: str) -> PromptSet:
        """The normal test prompts with every query text replaced by `text` (gold labels kept)."""

        def build() -> PromptSet:
            builder = self.normal(dataset).builder
            return PromptSet(builder, _with_queries(builder, dataset, self.pairs(dataset), text))

        return self._once(("query", text), dataset, build)


def _with_queries(builder: PromptBuilder, dataset: Dataset, pairs, texts: str | Sequence[str]) -> list:
    """The prompts of `pairs` with each query text replaced by texts[j] (or the one string `texts`)."""
    rows = dataset.rows
    texts = [texts] * len(pairs) if isinstance(texts, str) else texts
    return builder.build_many(
        [([rows[i] for i in demos], (text, rows[q][1])) for (demos, q), text in zip(pairs, texts, strict=True)]
    )


def _corrupt(demos: Sequence[tuple[str, int]], wrong: set[int], c: int) -> list[tuple[str, int]]:
    """`demos` with the label y of each position in `wrong` replaced by (y + 1) mod c."""
    return [(text, (y + 1) % c if pos in wrong else y) for pos, (text, y) in enumerate(demos)]


# ------------------------------------------------------------------------------------- the sets
def normal_sets(sets: PromptSets, dataset: Dataset) -> dict:
    return {"normal": sets.normal(dataset)}


def template_sets(sets: PromptSets, dataset: Dataset) -> dict:
    """The first min(100, --test-samples) test prompts under each of the 9 consistency templates."""
    q = min(TEMPLATE_QUERIES, sets.n, len(dataset.test))
    pairs = sets.pairs(dataset)[:q]  # the first q of test_pairs(.., n) are test_pairs(.., q)
    out = {}
    for t, template in enumerate(consistency_templates(dataset.info)):
        if template == default_template(dataset.info):  # template 0: the normal prompts
            normal = sets.normal(dataset)
            out[f"template {t}"] = PromptSet(normal.builder, normal.prompts[:q], template)
        else:
            builder = sets.builder(dataset.info, template)
            out[f"template {t}"] = PromptSet(builder, builder.build_pairs(dataset, pairs), template)
    return out


def demo_sets(sets: PromptSets, dataset: Dataset) -> dict:
    rows = demo_consistency_pairs(dataset, sets.k, sets.n)
    builder = sets.builder(dataset.info)
    return {"demo": PromptSet(builder, builder.build_pairs(dataset, [pair for row in rows for pair in row]))}  # i*8+t


def generalization_datasets(dataset: Dataset, datasets: Sequence | None) -> list[Dataset]:
    """The trained dataset first when it is not one of `datasets` (default: the 8 paper datasets), then those."""
    items = [d if isinstance(d, Dataset) else load_dataset(d) for d in (datasets or PAPER_DATASETS)]
    same = [d for d in items if d.info == dataset.info]
    return items if same else [dataset, *items]


def generalization_sets(sets: PromptSets, dataset: Dataset, datasets: Sequence | None = None) -> dict:
    return {item.info.name: sets.normal(item) for item in generalization_datasets(dataset, datasets)}


def unseen_sets(sets: PromptSets, dataset: Dataset) -> dict:
    normal = sets.normal(dataset)
    builder = normal.builder
    return {
        "normal": normal,
        "unseen_label": PromptSet(builder, builder.build_pairs(dataset, unseen_label_pairs(dataset, sets.k, sets.n))),
        "zero_shot": PromptSet(builder, builder.build_pairs(dataset, test_pairs(dataset, 0, sets.n))),
    }


def bias_sets(sets: PromptSets, dataset: Dataset) -> dict:
    """normal, contextual (empty query), domain (random demonstration words) and, for k > 0, one label-noise
    set per correct ratio (PromptSet.wrong = wrong labels per prompt; the set without any is the normal one)."""
    k, n = sets.k, sets.n
    normal, pairs = sets.normal(dataset), sets.pairs(dataset)
    builder = normal.builder
    out = {
        "normal": normal,
        "contextual": sets.with_query(dataset, ""),
        "domain": PromptSet(builder, _with_queries(builder, dataset, pairs, domain_queries(dataset, n))),
    }
    if k == 0:
        return out  # no demonstration label to corrupt
    rows, c = dataset.rows, len(dataset.info.label_words)
    counts = [int(k * (1.0 - r)) for r in LABEL_NOISE_CORRECT_RATIOS]  # wrong labels per prompt (StaICC's rounding)
    positions = wrong_label_positions(k, n, counts, len(dataset.test))
    for level, (m, wrong) in enumerate(zip(counts, positions, strict=True)):
        prompts = normal.prompts  # no wrong label: the normal prompts
        if m:
            corrupted = [
                (_corrupt([rows[i] for i in demos], wrong[j], c), rows[q]) for j, (demos, q) in enumerate(pairs)
            ]
            prompts = builder.build_many(corrupted)
        out[f"noise {level}"] = PromptSet(builder, prompts, wrong=m)
    return out


CALIBRATION_PROMPTS = 128  # StaICC's domain-calibration prompts and hidden / kNN anchors
DOMAIN_CALIBRATION_WORDS = 64  # StaICC's domain-calibration query length
CALIBRATION_SEED = 42  # of calibration_pairs' python random.Random


def calibration_methods(cfg) -> list[str]:
    """The calibrations --calibration selects, each once, in CALIBRATIONS order."""
    return [name for name in CALIBRATIONS if name in cfg.eval.calibration]


def calibration_pairs(dataset: Dataset, k: int) -> list[tuple[list[int], int]]:
    """The CALIBRATION_PROMPTS hidden / kNN anchor pairs: a demonstration-split query with k distinct other
    demonstration-split rows (validation_pairs with its own seed, so not the runner's validation prompts);
    the domain prompts keep their demonstrations."""
    return validation_pairs(dataset, k, CALIBRATION_PROMPTS, seed=CALIBRATION_SEED)


def calibration_sets(sets: PromptSets, dataset: Dataset) -> dict:
    """normal, then what the selected --calibration methods need: contextual: the same demonstrations with
    each CONTENT_FREE_INPUTS query; domain: CALIBRATION_PROMPTS prompts of calibration_pairs' demonstrations
    with DOMAIN_CALIBRATION_WORDS random demonstration-split words as query; hidden, knn: the anchors
    (calibration_pairs as built, gold = the query's label). Nothing from the test split but the normal set."""
    methods = calibration_methods(sets.cfg)
    normal = sets.normal(dataset)
    out = {"normal": normal}
    if "contextual" in methods:
        for text in CONTENT_FREE_INPUTS:
            out[f"content-free {text!r}"] = sets.with_query(dataset, text)
    if "domain" in methods or "hidden" in methods or "knn" in methods:
        pairs, builder = calibration_pairs(dataset, sets.k), normal.builder
    if "domain" in methods:
        words = domain_queries(dataset, len(pairs), length=DOMAIN_CALIBRATION_WORDS)
        out["domain"] = PromptSet(builder, _with_queries(builder, dataset, pairs, words))
    if "hidden" in methods or "knn" in methods:
        out["anchors"] = PromptSet(builder, builder.build_pairs(dataset, pairs))
    return out
