"""Deterministic prompt variants of the robustness and bias protocols (which rows, which labels, which words).

Everything here is StaICC's own sampling restated with our LCG (seed 42), so the prompt sets equal the ones
StaICC builds (tests/unit/test_suites.py checks them against the installed wheel):

    pairs = demo_consistency_pairs(ds, k=4)          # query i with demonstration lists i + 128 t, t = 0..7
    pairs = unseen_label_pairs(ds, k=4, n=1024)      # no demonstration carries the query's gold label
    wrong = wrong_label_positions(k=4, n=1024, wrong=2, ...)   # which demonstrations get a wrong label
    words = domain_queries(ds, n=1024)               # 128 random words from demonstration texts per prompt

Indices are into `dataset.rows` (as test_pairs / train_pairs give), never into a split.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from abft.data import LCG, demonstration_sets
from abft.errors import UserError

if TYPE_CHECKING:
    from abft.data import Dataset

DEMO_CONSISTENCY_QUERIES = 128
DEMO_CONSISTENCY_SETS = 8
DOMAIN_QUERY_WORDS = 128
STAICC_REPEATS = 2  # StaICC tests each test query twice (1024 prompts for 512 queries)


def _need_test_split(dataset: Dataset) -> None:
    if not dataset.test:
        raise UserError(f"dataset '{dataset.info.name}' has an empty test split; use more rows")


def demo_consistency_pairs(dataset: Dataset, k: int, queries: int | None = None) -> list[list[tuple[list[int], int]]]:
    """StaICC's demonstration-consistency prompts: rows[i][t] = (demonstration list i + S t, test query i).

    S = min(128, test split size) is the stride (128 for every StaICC dataset), t = 0..7; the lists are
    the first 8 S of StaICC's demonstration sampler (demonstration_sets). `queries` (<= S) keeps only the
    first queries (the stride stays S, so list i + 128 t does not depend on how many queries are kept).
    """
    _need_test_split(dataset)
    stride = min(DEMO_CONSISTENCY_QUERIES, len(dataset.test))
    q = stride if queries is None else max(0, min(queries, stride))
    lists = demonstration_sets(dataset, k, stride * DEMO_CONSISTENCY_SETS)
    return [[(lists[i + stride * t], dataset.test[i]) for t in range(DEMO_CONSISTENCY_SETS)] for i in range(q)]


def unseen_label_pairs(dataset: Dataset, k: int, n: int) -> list[tuple[list[int], int]]:
    """Test prompts whose k demonstrations all carry labels different from the query's gold label.

    StaICC's `set_out_of_domain_mode`: prompt j starts from demonstration list j of the normal sampler (the
    first 2 x |test| lists, or n if more); if that list holds the gold label of query j % |test|, it is
    replaced by the next list the same generator draws (continuing after the normal lists) that does not,
    prompt by prompt in order. The query of prompt j is test query j % |test|, as in test_pairs.
    """
    _need_test_split(dataset)
    rows, pool, test = dataset.rows, dataset.demonstration, dataset.test
    for y in sorted({rows[q][1] for q in test}):
        others = sum(rows[i][1] != y for i in pool)
        need = 1 if k > len(pool) else k
        if k > 0 and others < need:
            raise UserError(
                f"the demonstration split of '{dataset.info.name}' has {others} rows whose label is not "
                f"{y}; the unseen-label test needs {need} for k={k}"
            )
    rng = LCG()
    lists = demonstration_sets(dataset, k, max(n, STAICC_REPEATS * len(test)), rng=rng)
    out = []
    for j in range(n):
        query = test[j % len(test)]
        chosen = lists[j]
        while any(rows[i][1] == rows[query][1] for i in chosen):
            chosen = demonstration_sets(dataset, k, 1, rng=rng)[0]  # the same generator draws on
        out.append((chosen, query))
    return out


def wrong_label_positions(k: int, n: int, wrong_counts: list[int], test_size: int) -> list[list[set[int]]]:
    """For each wrong-label count m (in run order) and prompt j < n: the demonstration positions to corrupt.

    StaICC's GLER test keeps one LCG(42) across the whole run: at every prompt of every noise level it picks
    m of the k demonstrations (`sample_n_elements_from_list`, drawing nothing when m = 0). Each level runs
    over max(n, 2 x |test|) prompts, so the first n prompts match StaICC's whatever n is.
    """
    rng = LCG()
    total = max(n, STAICC_REPEATS * test_size)
    out = []
    for m in wrong_counts:
        if not 0 <= m <= k:
            raise ValueError(f"wrong-label count {m} outside 0..{k}")
        level = [set(rng.sample_index_set(m, k)) if m else set() for _ in range(total)]
        out.append(level[:n])
    return out


def domain_queries(dataset: Dataset, n: int, length: int = DOMAIN_QUERY_WORDS) -> list[str]:
    """StaICC's domain-bias queries: per prompt, `length` words drawn with one LCG(42) from demonstration texts.

    Each word: a demonstration row r = pool[int((|pool| - 1) u)], then word w = split[int((len(split) - 1) u')]
    of r's text split on single spaces (StaICC's `get_int_from_range(0, len - 1)`, which never picks the
    last element); words are joined with single spaces.
    """
    if not dataset.demonstration:
        raise UserError(f"dataset '{dataset.info.name}' has an empty demonstration split; use more rows")
    rng = LCG()
    texts = [dataset.rows[i][0] for i in dataset.demonstration]
    out = []
    for _ in range(n):
        words = []
        while len(words) < length:
            parts = texts[int((len(texts) - 1) * rng.float())].split(" ")
            words.append(parts[int((len(parts) - 1) * rng.float())])
        out.append(" ".join(words))
    return out
