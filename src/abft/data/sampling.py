"""Deterministic sampling: StaICC's LCG, its splits and demonstration sampler, and ABFT training pairs.

StaICC draws everything from one linear congruential generator (x <- (1664525 x + 1013904223) mod 2^32,
seed 42, float = x / 2^32) and `sample_index_set(n, N)`: pool = range(N); n times pick
int(float() * len(pool)) and pop it. We restate that here so the splits and the 1024 test prompts are
bit-exact with StaICC without importing it (tests/parity/test_data_staicc.py checks this).

    rng = LCG()                                    # seed 42, as StaICC
    sets = demonstration_sets(dataset, k=4)        # 1024 lists of k row indices (demonstration split)
    pairs = test_pairs(dataset, k=4)               # prompt j: (sets[j], dataset.test[j % 512])
    train = train_pairs(dataset, k=4, n=512, seed=0)  # calibration split only, python random
    val = validation_pairs(dataset, k=4, n=256)       # demonstration split only: for choosing settings
"""

from __future__ import annotations

import bisect
import random
from typing import TYPE_CHECKING

from abft.errors import UserError

if TYPE_CHECKING:
    from abft.data.staicc import Dataset

_A, _B, _M = 1664525, 1013904223, 2**32
STAICC_SEED = 42


class LCG:
    """StaICC's `stable_random`: the same numbers in the same order for the same seed."""

    def __init__(self, seed: int = STAICC_SEED):
        self.state = seed

    def float(self) -> float:
        self.state = (self.state * _A + _B) % _M
        return self.state / _M

    def sample_index_set(self, n: int, N: int, allow_repetition: bool = False) -> list[int]:
        """n indices from range(N), drawn and (without repetition) removed from an ordered pool.

        StaICC materialises the pool and pops from it (O(n N)); since the pool stays sorted, "the i-th
        remaining index" gives the same numbers in O(n^2) for small n and with a Fenwick tree otherwise.
        """
        if allow_repetition:
            return [int(self.float() * N) for _ in range(n)]
        if n > N:
            raise ValueError(f"cannot draw {n} distinct indices from {N}")
        if n <= 64:
            taken: list[int] = []  # sorted
            out = []
            for _ in range(n):
                v = int(self.float() * (N - len(out)))
                for t in taken:
                    if t > v:
                        break
                    v += 1
                bisect.insort(taken, v)
                out.append(v)
            return out
        return self._sample_fenwick(n, N)

    def _sample_fenwick(self, n: int, N: int) -> list[int]:
        tree = [i & -i for i in range(N + 1)]  # Fenwick tree of N ones, 1-based
        top = 1 << (N.bit_length() - 1) if N else 0
        out = []
        for drawn in range(n):
            rank = int(self.float() * (N - drawn)) + 1  # 1-based rank among the remaining indices
            pos, step = 0, top
            while step:
                if pos + step <= N and tree[pos + step] < rank:
                    pos += step
                    rank -= tree[pos]
                step >>= 1
            out.append(pos)  # 1-based position pos + 1 holds index pos
            j = pos + 1
            while j <= N:
                tree[j] -= 1
                j += j & -j
        return out


def staicc_split(n_rows: int, sizes: tuple[int, int, int]) -> tuple[list[int], list[int], list[int]]:
    """StaICC's triplet split: one LCG(42) draw of sum(sizes) rows, cut into calibration/demo/test."""
    cal, demo, test = sizes
    idx = LCG().sample_index_set(cal + demo + test, n_rows)
    return idx[:cal], idx[cal : cal + demo], idx[cal + demo :]


def demonstration_sets(dataset: Dataset, k: int, n: int = 1024, rng: LCG | None = None) -> list[list[int]]:
    """StaICC's demonstration sampler: a fresh LCG(42) (or `rng`, which it advances) draws n lists of k.

    Indices are into `dataset.rows`. Within a list the k demonstrations are distinct unless k exceeds
    the demonstration pool (then StaICC draws with repetition). Lists are not class-balanced. Passing
    `rng` lets a caller keep drawing from the same generator (the unseen-label sampler's replacements).
    """
    if k < 0 or n < 0:
        raise UserError(f"k and n must be >= 0 (got k={k}, n={n})")
    pool = dataset.demonstration
    if k > 0 and not pool:
        raise UserError(f"dataset '{dataset.info.name}' has an empty demonstration split; use more rows")
    rng = LCG() if rng is None else rng
    repeat = k > len(pool)
    return [[pool[i] for i in rng.sample_index_set(k, len(pool), repeat)] for _ in range(n)]


def test_pairs(dataset: Dataset, k: int, n: int = 1024) -> list[tuple[list[int], int]]:
    """StaICC's test prompts: prompt j = (demonstration list j, test query j % len(test)).

    With 512 test queries and n = 1024 this is StaICC's order: all 512 queries with lists 0..511, then
    all 512 again with lists 512..1023 (its `repeat_times` = 2 loop). The template-consistency test uses
    the first 100 (queries 0..99, lists 0..99); the demonstration-consistency test uses query i with
    lists i + 128 t, t = 0..7.
    """
    if not dataset.test:
        raise UserError(f"dataset '{dataset.info.name}' has an empty test split; use more rows")
    sets = demonstration_sets(dataset, k, n)
    m = len(dataset.test)
    return [(sets[j], dataset.test[j % m]) for j in range(n)]


def train_pairs(dataset: Dataset, k: int, n: int, seed: int) -> list[tuple[list[int], int]]:
    """n ABFT training prompts (demo row indices, query row index) from the CALIBRATION split only.

    Queries run through seeded shuffles of the calibration split (no query repeats until all have been
    used once); each query gets k distinct demonstrations from the rest of the split (python
    `random.Random(seed)`, so the same seed gives the same prompts).
    """
    cal = _query_pool(dataset, "calibration", k, n)
    rng = random.Random(seed)
    out: list[tuple[list[int], int]] = []
    order: list[int] = []
    while len(out) < n:
        if not order:
            order = list(range(len(cal)))
            rng.shuffle(order)
        qpos = order.pop()
        picks = rng.sample(range(len(cal) - 1), k)  # positions in cal with the query's slot removed
        out.append(([cal[p + (p >= qpos)] for p in picks], cal[qpos]))
    return out


VALIDATION_SEED = 1234


def validation_pairs(dataset: Dataset, k: int, n: int, seed: int = VALIDATION_SEED) -> list[tuple[list[int], int]]:
    """n held-out prompts from the DEMONSTRATION split alone: a random query and k distinct demonstrations
    from the rest of the split (python `random.Random(seed)`). Training never sees this split and the test
    split is not touched, so settings can be chosen on these prompts (benchmarks/recipe.py, abft ceiling).
    """
    pool = _query_pool(dataset, "demonstration", k, n)
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        query = rng.choice(pool)
        pairs.append((rng.sample([i for i in pool if i != query], k), query))
    return pairs


def _query_pool(dataset: Dataset, split: str, k: int, n: int) -> list[int]:
    """The rows of `split`, checked to hold a query plus k other demonstrations."""
    rows = list(getattr(dataset, split))
    if k < 0 or n < 0:
        raise UserError(f"k and n must be >= 0 (got k={k}, n={n})")
    if len(rows) < k + 1:
        raise UserError(
            f"{split} split of '{dataset.info.name}' has {len(rows)} rows; k={k} needs at least {k + 1}"
            "; lower k or use a larger dataset"
        )
    return rows
