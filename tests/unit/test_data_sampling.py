"""StaICC's LCG (known values) and ABFT training pairs."""

from __future__ import annotations

import pytest

from abft import data as D
from abft.errors import UserError


def test_lcg_known_values():
    rng = D.LCG()
    x = 42
    for _ in range(5):
        x = (1664525 * x + 1013904223) % 2**32
        assert rng.float() == x / 2**32
    # StaICC: stable_random().sample_index_set(5, 10)
    assert D.LCG().sample_index_set(5, 10) == [2, 0, 6, 3, 5]


def _naive(rng, n, N, rep):
    pool, out = list(range(N)), []
    for _ in range(n):
        i = int(rng.float() * len(pool))
        out.append(pool[i] if rep else pool.pop(i))
    return out


@pytest.mark.parametrize("n, N", [(0, 0), (1, 1), (4, 4096), (64, 64), (65, 100), (300, 5000), (1000, 1000)])
def test_fast_sampler_equals_pool_popping(n, N):
    for seed in (42, 7):
        assert D.LCG(seed).sample_index_set(n, N) == _naive(D.LCG(seed), n, N, False)
    assert D.LCG().sample_index_set(n, N + 1, True) == _naive(D.LCG(), n, N + 1, True)
    with pytest.raises(ValueError):
        D.LCG().sample_index_set(N + 1, N)


def _toy(n_rows=40):
    rows = [(f"t{i}", i % 2) for i in range(n_rows)]
    return D.Dataset(D.dataset_info("sst2"), rows, list(range(0, 10)), list(range(10, 30)), list(range(30, 40)))


def test_train_pairs_use_calibration_only_and_are_deterministic():
    ds = _toy()
    pairs = D.train_pairs(ds, k=4, n=25, seed=3)
    assert len(pairs) == 25
    for demos, q in pairs:
        assert len(demos) == 4 and len(set(demos)) == 4 and q not in demos
        assert set(demos) | {q} <= set(ds.calibration)
    # the first len(calibration) queries are all distinct, then the cycle restarts
    assert sorted(q for _, q in pairs[:10]) == ds.calibration
    assert D.train_pairs(ds, 4, 25, 3) == pairs
    assert D.train_pairs(ds, 4, 25, 4) != pairs
    assert D.train_pairs(ds, 4, 10, 3) == pairs[:10]


def test_train_pairs_k_too_large():
    with pytest.raises(UserError, match="needs at least 11"):
        D.train_pairs(_toy(), k=10, n=1, seed=0)
    assert all(len(d) == 9 for d, _ in D.train_pairs(_toy(), k=9, n=3, seed=0))


def test_validation_pairs_use_the_demonstration_split_only():
    ds = _toy()
    pairs = D.validation_pairs(ds, k=3, n=40)
    for demos, q in pairs:
        assert len(set(demos)) == 3 and q not in demos and set(demos) | {q} <= set(ds.demonstration)
    assert D.validation_pairs(ds, 3, 40) == pairs and D.validation_pairs(ds, 3, 40, seed=5) != pairs
    with pytest.raises(UserError, match="needs at least 21"):
        D.validation_pairs(ds, k=20, n=1)


def test_test_pairs_order():
    ds = _toy()
    pairs = D.test_pairs(ds, k=2, n=25)
    sets = D.demonstration_sets(ds, 2, 25)
    assert [d for d, _ in pairs] == sets
    assert [q for _, q in pairs] == [ds.test[j % 10] for j in range(25)]
    assert all(set(d) <= set(ds.demonstration) and len(set(d)) == 2 for d in sets)


def test_real_dataset_train_pairs():
    ds = D.load_dataset("financial_phrasebank")
    pairs = D.train_pairs(ds, 4, 512, seed=0)
    cal = set(ds.calibration)
    assert all(q in cal and set(d) <= cal for d, q in pairs)
    assert len({q for _, q in pairs}) == 512


def test_load_dataset_refuses_user_info():
    with pytest.raises(UserError, match="not a StaICC dataset"):
        D.load_dataset(D.DatasetInfo(-1, "mine", "", "input: ", "label: ", ("a", "b"), (1, 1, 1)))
