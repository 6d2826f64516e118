"""Probability rows for the metrics and calibration tests: a numpy softmax and hypothesis strategies.

``softmax_rows(x)`` softmaxes the rows of a 2-D array; ``distributions()`` draws (N, C) float64 rows (pass C to
draw several sets with one C: ``st.integers(2, 6).flatmap(lambda c: st.tuples(distributions(c), distributions(c)))``);
``probs_and_gold()`` draws such rows, sometimes with an exact one-hot row, and gold labels.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st


def softmax_rows(x: np.ndarray) -> np.ndarray:
    """Row-wise softmax of a 2-D array, computed in its own dtype."""
    z = np.exp(x - x.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


@st.composite
def distributions(draw, c: int | None = None, max_rows: int = 20) -> np.ndarray:
    """(N, C) float64 rows of strictly positive probabilities; C in 2..6 unless given, N in 1..max_rows."""
    c = draw(st.integers(2, 6)) if c is None else c
    n = draw(st.integers(1, max_rows))
    raw = draw(st.lists(st.lists(st.floats(0.0, 1.0), min_size=c, max_size=c), min_size=n, max_size=n))
    p = np.asarray(raw) + 1e-3
    return p / p.sum(axis=1, keepdims=True)


@st.composite
def probs_and_gold(draw, max_rows: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """(probs, gold): `distributions` rows whose first row is sometimes exactly one-hot (confidence exactly 1.0),
    and int64 gold labels in [0, C)."""
    probs = draw(distributions(max_rows=max_rows))
    n, c = probs.shape
    if draw(st.booleans()):
        probs[0] = np.eye(c)[draw(st.integers(0, c - 1))]
    gold = np.asarray(draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)), dtype=np.int64)
    return probs, gold
