"""Evaluation metrics of the StaICC protocol, as pure functions on numpy arrays.

Conventions shared by every function here:

* ``probs`` is an (N, C) array whose rows are probability distributions over the C labels (already
  normalised: non-negative, each row summing to 1 within ``ROW_SUM_TOLERANCE``). Nothing here applies a
  softmax or renormalises; passing logits is an error (``ValueError``), not a silent conversion.
* ``gold`` is an (N,) integer array of gold label indices in ``[0, C)``.
* The predicted label of a row is its argmax; on ties the FIRST maximum wins (``numpy.argmax``).
* Every metric returns a Python ``float``.

Where these definitions differ from StaICC 0.1.1 (``StaICC.util.functional``) the docstring says so.
The main difference: StaICC re-softmaxes the whole prediction matrix whenever any single row does not sum
to exactly ``1.0`` in floating point (``functional.probability_matrix_check``), which silently changes the
true-label likelihood, the ECE and the entropy-based bias metrics. We never do that.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "ECE_BINS",
    "LABEL_NOISE_CORRECT_RATIOS",
    "ROW_SUM_TOLERANCE",
    "accuracy",
    "classification_metrics",
    "consistency",
    "entropy_of_mean",
    "expected_calibration_error",
    "label_noise_slope",
    "macro_f1",
    "percent",
    "posterior_bias",
    "true_label_likelihood",
]

ROW_SUM_TOLERANCE = 1e-4
"""How far a row of ``probs`` may sum from 1 (float32 softmax outputs are within ~1e-6)."""

ECE_BINS = 10
"""Number of equal-width confidence bins of the StaICC protocol."""

LABEL_NOISE_CORRECT_RATIOS = (1.0, 0.75, 0.5, 0.25, 0.0)
"""Fractions of correct demonstration labels of the GLER (label-noise) test, in run order."""


# --------------------------------------------------------------------------------------------- checks
def _check_probs(probs: np.ndarray) -> np.ndarray:
    """Return ``probs`` as a float64 (N, C) array, or raise ValueError if it is not one of distributions."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must be a 2-D (N, C) array, got shape {p.shape}")
    if p.shape[0] == 0 or p.shape[1] == 0:
        raise ValueError(f"probs must have at least one row and one column, got shape {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError("probs contains NaN or infinite values")
    if np.any(p < 0.0) or np.any(p > 1.0 + ROW_SUM_TOLERANCE):
        raise ValueError("probs must lie in [0, 1]; pass probabilities, not logits")
    sums = p.sum(axis=1)
    worst = int(np.argmax(np.abs(sums - 1.0)))
    if abs(sums[worst] - 1.0) > ROW_SUM_TOLERANCE:
        raise ValueError(
            f"every row of probs must sum to 1 (row {worst} sums to {sums[worst]!r}); "
            "normalise the label probabilities first"
        )
    return p


def _check_gold(gold: np.ndarray, n: int, num_classes: int) -> np.ndarray:
    """Return ``gold`` as an int64 (N,) array of indices in [0, num_classes), or raise ValueError."""
    g = np.asarray(gold)
    if g.ndim != 1:
        raise ValueError(f"gold must be a 1-D array, got shape {g.shape}")
    if g.shape[0] != n:
        raise ValueError(f"gold has {g.shape[0]} entries but probs has {n} rows")
    if g.dtype == np.bool_ or not np.issubdtype(g.dtype, np.integer):
        raise ValueError(f"gold must hold integer label indices, got dtype {g.dtype}")
    g = g.astype(np.int64)
    if np.any(g < 0) or np.any(g >= num_classes):
        raise ValueError(f"gold labels must lie in [0, {num_classes}), got min {g.min()} max {g.max()}")
    return g


def _check_num_classes(p: np.ndarray, num_classes: int) -> None:
    if int(num_classes) != p.shape[1]:
        raise ValueError(f"num_classes={num_classes} but probs has {p.shape[1]} columns")


def _probs_and_gold(probs, gold) -> tuple[np.ndarray, np.ndarray]:
    p = _check_probs(probs)
    return p, _check_gold(gold, p.shape[0], p.shape[1])


def _check_bins(bins) -> int:
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    return int(bins)


# ------------------------------------------------------------------- classification, unchecked
# These take arrays the public functions below have checked (p: float64 (N, C) distributions, g: int64 gold)
# and the argmax predictions `pred`, so classification_metrics checks its input and takes the argmax once.
def _accuracy(pred: np.ndarray, g: np.ndarray) -> float:
    return float(np.mean(pred == g))


def _macro_f1(pred: np.ndarray, g: np.ndarray, c: int) -> float:
    hit = pred == g
    tp = np.bincount(g[hit], minlength=c)
    fp = np.bincount(pred[~hit], minlength=c)
    fn = np.bincount(g[~hit], minlength=c)
    denom = 2 * tp + fp + fn
    f1 = np.divide(2.0 * tp, denom, out=np.zeros(c, dtype=np.float64), where=denom > 0)
    return float(f1.mean())


def _true_label_likelihood(p: np.ndarray, g: np.ndarray) -> float:
    return float(np.mean(p[np.arange(p.shape[0]), g]))


def _expected_calibration_error(p: np.ndarray, pred: np.ndarray, g: np.ndarray, bins: int) -> float:
    conf = p.max(axis=1)
    correct = (pred == g).astype(np.float64)
    edges = np.arange(bins + 1, dtype=np.float64) / bins
    # side="right": a confidence equal to e_j goes to bin j; 1.0 would be bin `bins`, clip into the last.
    idx = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, bins - 1)
    count = np.bincount(idx, minlength=bins).astype(np.float64)
    conf_sum = np.bincount(idx, weights=conf, minlength=bins)
    acc_sum = np.bincount(idx, weights=correct, minlength=bins)
    # sum_j (n_j/N) |acc_sum_j/n_j - conf_sum_j/n_j| = (1/N) sum_j |acc_sum_j - conf_sum_j|
    gap = np.abs(acc_sum - conf_sum)[count > 0]
    return float(gap.sum() / p.shape[0])


# -------------------------------------------------------------------------------- classification
def accuracy(probs: np.ndarray, gold: np.ndarray) -> float:
    """Fraction of rows whose argmax (first maximum on ties) equals the gold label.

    accuracy = (1/N) * sum_i [argmax_c probs[i, c] == gold[i]].
    Same as StaICC ``functional.accuracy`` (its re-softmax cannot change an argmax).
    """
    p, g = _probs_and_gold(probs, gold)
    return _accuracy(np.argmax(p, axis=1), g)


def macro_f1(probs: np.ndarray, gold: np.ndarray, num_classes: int) -> float:
    """Unweighted mean of the per-class F1 over ALL ``num_classes`` classes.

    With the argmax prediction, per class c: TP, FP, FN counts and
    F1_c = 2 TP / (2 TP + FP + FN), which equals 2 P R / (P + R); F1_c = 0 whenever TP = 0.
    In particular a class that is never predicted, never gold, or NEITHER predicted NOR gold has F1 0
    and still counts in the denominator (so a perfect classifier scores (C - #absent classes) / C when
    some class is missing from the evaluated set). This is exactly what StaICC ``functional.macro_F1``
    does (it takes C from the width of the prediction rows); sklearn's ``f1_score(average="macro",
    labels=range(C))`` agrees with its default zero_division.
    """
    p, g = _probs_and_gold(probs, gold)
    _check_num_classes(p, num_classes)
    return _macro_f1(np.argmax(p, axis=1), g, p.shape[1])


def true_label_likelihood(probs: np.ndarray, gold: np.ndarray) -> float:
    """Averaged true-label likelihood: (1/N) * sum_i probs[i, gold[i]].

    Equals StaICC ``functional.averaged_truelabel_likelihood`` when every row sums to exactly 1.0;
    otherwise StaICC softmaxes the (already normalised) rows again and reports a value squashed
    towards 1/C. We never re-softmax.
    """
    p, g = _probs_and_gold(probs, gold)
    return _true_label_likelihood(p, g)


def expected_calibration_error(probs: np.ndarray, gold: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error with ``bins`` equal-width confidence bins.

    confidence_i = max_c probs[i, c]; correct_i = [argmax_c probs[i, c] == gold[i]].
    Bin edges are e_j = j / bins (float64), j = 0..bins. Row i falls in bin j iff e_j <= conf_i < e_{j+1},
    except that the LAST bin is closed, [e_{bins-1}, 1], so a confidence of exactly 1.0 is counted.
    ECE = sum_j (n_j / N) * |mean(correct in bin j) - mean(confidence in bin j)|, empty bins add 0.

    Differences from StaICC ``functional.expected_calibration_error_1``: (1) StaICC re-softmaxes the whole
    matrix when any row does not sum to exactly 1.0; (2) its last bin is half-open [0.9, 1.0), so rows
    with confidence exactly 1.0 (e.g. one-hot predictions) fall in no bin and are dropped from the sum
    while still counting in N; (3) it raises when bins > N and, in its strict mode, ignores any bins
    other than 10. For confidences < 1 and exactly normalised rows the two agree (same edges).
    """
    p, g = _probs_and_gold(probs, gold)
    bins = _check_bins(bins)
    return _expected_calibration_error(p, np.argmax(p, axis=1), g, bins)


def classification_metrics(probs: np.ndarray, gold: np.ndarray, num_classes: int) -> dict[str, float]:
    """All four classification metrics: keys "accuracy", "macro_f1", "true_label_likelihood", "ece"."""
    p, g = _probs_and_gold(probs, gold)
    _check_num_classes(p, num_classes)
    pred = np.argmax(p, axis=1)
    return {
        "accuracy": _accuracy(pred, g),
        "macro_f1": _macro_f1(pred, g, p.shape[1]),
        "true_label_likelihood": _true_label_likelihood(p, g),
        "ece": _expected_calibration_error(p, pred, g, ECE_BINS),
    }


# ------------------------------------------------------------------------------------ consistency
def consistency(predictions: np.ndarray) -> float:
    """Mean over rows of (size of the largest group of equal predictions in the row) / M.

    ``predictions`` is a (Q, M) integer array: row q holds the predicted labels of query q under M
    variants (templates or demonstration sets). The value lies in [1/M, 1]; 1 means every query got the
    same prediction under all variants. Same definition as StaICC ``functional.consistency``, whose
    input is instead a flat list ordered variant-major (entry t * Q + q) of label rows.
    """
    a = np.asarray(predictions)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"predictions must be a non-empty 2-D (Q, M) array, got shape {a.shape}")
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"predictions must hold integer labels, got dtype {a.dtype}")
    # same[q, i, j] = predictions[q, i] == predictions[q, j]; row sums count each entry's group size.
    group_size = (a[:, :, None] == a[:, None, :]).sum(axis=2)
    return float(np.mean(group_size.max(axis=1) / a.shape[1]))


# ------------------------------------------------------------------------------------------- bias
def entropy_of_mean(probs: np.ndarray) -> float:
    """Entropy, in nats (natural log), of the mean predicted distribution p_bar = mean_i probs[i].

    H = -sum_c p_bar_c ln p_bar_c with 0 ln 0 = 0; lies in [0, ln C], ln C meaning no bias.
    Used for contextual bias (empty query) and domain bias (random in-domain words as query).
    StaICC ``functional.bias_mean_entropy_metric`` / ``functional.entropy`` softmaxes p_bar again
    unless it sums to exactly 1.0 (which a float mean rarely does), pushing the value towards ln C.
    """
    p = _check_probs(probs)
    mean = p.mean(axis=0)
    nz = mean[mean > 0]
    return float(-np.sum(nz * np.log(nz)))


def posterior_bias(probs: np.ndarray, gold: np.ndarray, num_classes: int) -> float:
    """KL(p_bar || f) in nats: p_bar = mean predicted distribution, f_c = fraction of gold labels = c.

    KL = sum_c p_bar_c ln(p_bar_c / f_c), with terms where p_bar_c = 0 contributing 0.
    Zero frequencies are NOT smoothed: if some class has f_c = 0 but p_bar_c > 0 the divergence is
    infinite and ``math.inf`` is returned (no epsilon, so the value is never an artefact of a constant).
    StaICC ``functional.post_bias_dl_metric`` computes the same quantity but crashes in both cases
    (ZeroDivisionError when f_c = 0, ValueError "math domain error" when p_bar_c = 0).
    """
    p, g = _probs_and_gold(probs, gold)
    _check_num_classes(p, num_classes)
    c = p.shape[1]
    mean = p.mean(axis=0)
    freq = np.bincount(g, minlength=c) / g.shape[0]
    support = mean > 0
    if np.any(support & (freq == 0)):
        return math.inf
    m, f = mean[support], freq[support]
    return float(max(0.0, np.sum(m * np.log(m / f))))


# ------------------------------------------------------------------------------------- label noise
def label_noise_slope(ratios: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of a metric against the fraction of correct demonstration labels (GLER).

    slope = sum_i (x_i - x_bar)(y_i - y_bar) / sum_i (x_i - x_bar)^2 with x = ``ratios`` (the TRUE
    fractions of correct labels, normally ``LABEL_NOISE_CORRECT_RATIOS`` = 1, .75, .5, .25, 0) and
    y = ``values`` (the metric at each ratio). A positive slope means the metric falls as labels are
    corrupted. StaICC's ``GLER_experimentor.auto_run`` (util/experimentor.py) fits against
    x = [1, .75, .25, -.5, -1.5] instead (it subtracts i/4 cumulatively), which changes the slope.
    """
    x = np.asarray(ratios, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or y.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"ratios and values must be 1-D of equal length, got {x.shape} and {y.shape}")
    if x.shape[0] < 2:
        raise ValueError("need at least two (ratio, value) points to fit a slope")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("ratios and values must be finite")
    dx = x - x.mean()
    sxx = float(np.sum(dx * dx))
    if sxx == 0.0:
        raise ValueError("ratios must not all be equal")
    return float(np.sum(dx * (y - y.mean())) / sxx)


# -------------------------------------------------------------------------------------- display
def percent(x: float | None) -> str:
    """A metric in [0, 1] as a percentage with two decimals ("65.12"), "-" when missing (None)."""
    return "-" if x is None else f"{100 * x:.2f}"
