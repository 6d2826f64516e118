"""Tests of abft.evaluation.metrics: hand-computed cases, StaICC 0.1.1 as an oracle, properties.

StaICC's ``util.functional`` is imported here only as a test oracle (its argument order is
(ground_truth, prediction), the reverse of ours).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from random_probs import probs_and_gold, softmax_rows
from StaICC.util import functional as staicc

from abft.evaluation.metrics import (
    LABEL_NOISE_CORRECT_RATIOS,
    accuracy,
    classification_metrics,
    consistency,
    entropy_of_mean,
    expected_calibration_error,
    label_noise_slope,
    macro_f1,
    percent,
    posterior_bias,
    true_label_likelihood,
)

# ------------------------------------------------------------------------------------ fixtures
# Four rows, three classes.            argmax   conf   gold   correct
HAND_PROBS = np.array(
    [
        [0.7, 0.2, 0.1],  # -> 0        0.7    0      yes
        [0.2, 0.5, 0.3],  # -> 1        0.5    2      no
        [0.1, 0.1, 0.8],  # -> 2        0.8    2      yes
        [0.4, 0.4, 0.2],  # -> 0 (first max of the tie 0.4/0.4)   0.4    1      no
    ]
)
HAND_GOLD = np.array([0, 2, 2, 1])


def dyadic_rows(rng: np.random.Generator, n: int, c: int) -> np.ndarray:
    """Random rows k / 2**20 with integer k summing to 2**20: every row sums to EXACTLY 1.0 in floats
    (all partial sums are exact), so StaICC's exact-sum check passes and it does not re-softmax."""
    total = 2**20
    counts = np.stack([rng.multinomial(total, rng.dirichlet(np.ones(c))) for _ in range(n)])
    rows = counts / total
    assert staicc.probability_matrix_check(rows.tolist())
    return rows


def loop_ece(probs: np.ndarray, gold: np.ndarray, bins: int = 10) -> float:
    """ECE as the docstring defines it, bin by bin in float64: an oracle independent of the vectorised code."""
    p = np.asarray(probs, dtype=np.float64)
    conf, correct = p.max(axis=1), p.argmax(axis=1) == gold
    total = 0.0
    for j in range(bins):
        upper = conf <= (j + 1) / bins if j == bins - 1 else conf < (j + 1) / bins  # the last bin is closed
        members = (conf >= j / bins) & upper
        if members.any():
            total += members.mean() * abs(correct[members].mean() - conf[members].mean())
    return total


# ------------------------------------------------------------------------------- hand-computed
def test_accuracy_hand():
    # correct rows 0 and 2 of 4 -> 2/4; row 3 ties 0.4/0.4 and the FIRST max (class 0) is taken,
    # so it is wrong (gold 1). Taking the last max would give 3/4.
    assert accuracy(HAND_PROBS, HAND_GOLD) == pytest.approx(0.5, abs=1e-15)


def test_accuracy_first_max_wins():
    probs = np.array([[0.5, 0.5], [0.5, 0.5]])
    assert accuracy(probs, np.array([0, 0])) == 1.0
    assert accuracy(probs, np.array([1, 1])) == 0.0


def test_true_label_likelihood_hand():
    # gold probabilities 0.7, 0.3, 0.8, 0.4 -> 2.2 / 4 = 0.55
    assert true_label_likelihood(HAND_PROBS, HAND_GOLD) == pytest.approx(0.55, abs=1e-15)


def test_macro_f1_hand():
    # pred = [0, 1, 2, 0], gold = [0, 2, 2, 1]
    # class 0: TP 1 (row 0), FP 1 (row 3), FN 0      -> F1 = 2*1 / (2*1 + 1 + 0) = 2/3
    # class 1: TP 0,          FP 1 (row 1), FN 1 (row 3) -> F1 = 0
    # class 2: TP 1 (row 2), FP 0,          FN 1 (row 1) -> F1 = 2 / (2 + 0 + 1) = 2/3
    # macro = (2/3 + 0 + 2/3) / 3 = 4/9
    assert macro_f1(HAND_PROBS, HAND_GOLD, 3) == pytest.approx(4 / 9, abs=1e-15)


def test_macro_f1_class_absent_from_gold_and_predictions_counts_as_zero():
    # Perfect predictions on classes 0 and 1; class 2 is neither gold nor predicted.
    # F1 = (1 + 1 + 0) / 3 = 2/3 (StaICC does the same: it averages over the row width).
    probs = np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1]])
    gold = np.array([0, 1, 0])
    assert macro_f1(probs, gold, 3) == pytest.approx(2 / 3, abs=1e-15)
    assert staicc.macro_F1(gold.tolist(), probs.tolist()) == pytest.approx(2 / 3, abs=1e-15)


def test_ece_hand_four_bins_one_row_each():
    # conf 0.7 (bin [0.7,0.8), correct), 0.5 ([0.5,0.6), wrong), 0.8 ([0.8,0.9), correct),
    # 0.4 ([0.4,0.5), wrong); each bin holds one row, weight 1/4:
    # (|1-0.7| + |0-0.5| + |1-0.8| + |0-0.4|) / 4 = (0.3 + 0.5 + 0.2 + 0.4) / 4 = 1.4 / 4 = 0.35
    assert expected_calibration_error(HAND_PROBS, HAND_GOLD) == pytest.approx(0.35, abs=1e-12)


def test_ece_hand_shared_bins_and_confidence_one():
    probs = np.array(
        [
            [0.95, 0.05],  # conf 0.95, gold 0, correct    -> bin 9
            [0.91, 0.09],  # conf 0.91, gold 1, wrong      -> bin 9
            [0.35, 0.65],  # conf 0.65, gold 1, correct    -> bin 6
            [0.62, 0.38],  # conf 0.62, gold 0, correct    -> bin 6
            [0.00, 1.00],  # conf 1.00, gold 0, wrong      -> bin 9 (the last bin is closed)
        ]
    )
    gold = np.array([0, 1, 1, 0, 0])
    # bin 9: 3 rows, accuracy 1/3, mean conf (0.95 + 0.91 + 1.0)/3 = 2.86/3
    #        weight 3/5 * |1/3 - 2.86/3| = |1 - 2.86| / 5 = 1.86 / 5 = 0.372
    # bin 6: 2 rows, accuracy 1, mean conf (0.65 + 0.62)/2 = 0.635
    #        weight 2/5 * |1 - 0.635| = 0.73 / 5 = 0.146
    # ECE = 0.372 + 0.146 = 0.518   (dropping the conf-1.0 row, as StaICC does, would give 0.318)
    assert expected_calibration_error(probs, gold) == pytest.approx(0.518, abs=1e-12)


def test_ece_bin_edge_belongs_to_upper_bin():
    # conf 0.7 exactly is in [0.7, 0.8), conf 0.65 in [0.6, 0.7): separate bins ->
    # (|1 - 0.7| + |0 - 0.65|) / 2 = 0.95 / 2 = 0.475. (One shared bin would give |1 - 1.35| / 2 = 0.175.)
    probs = np.array([[0.7, 0.3], [0.65, 0.35]])
    gold = np.array([0, 1])
    assert expected_calibration_error(probs, gold) == pytest.approx(0.475, abs=1e-12)


def test_ece_single_bin_is_accuracy_minus_mean_confidence():
    # bins=1: |accuracy - mean confidence| = |0.5 - (0.7 + 0.5 + 0.8 + 0.4)/4| = |0.5 - 0.6| = 0.1
    assert expected_calibration_error(HAND_PROBS, HAND_GOLD, bins=1) == pytest.approx(0.1, abs=1e-12)


def test_classification_metrics_hand():
    got = classification_metrics(HAND_PROBS, HAND_GOLD, 3)
    assert set(got) == {"accuracy", "macro_f1", "true_label_likelihood", "ece"}
    assert got["accuracy"] == pytest.approx(0.5)
    assert got["macro_f1"] == pytest.approx(4 / 9)
    assert got["true_label_likelihood"] == pytest.approx(0.55)
    assert got["ece"] == pytest.approx(0.35)
    assert all(type(v) is float for v in got.values())


def test_consistency_hand():
    # row 0: {0,0,1} largest group 2 -> 2/3; row 1: {2,2,2} -> 3/3; row 2: {0,1,2} -> 1/3
    # mean = (2/3 + 1 + 1/3) / 3 = 2/3
    preds = np.array([[0, 0, 1], [2, 2, 2], [0, 1, 2]])
    assert consistency(preds) == pytest.approx(2 / 3, abs=1e-15)


def test_entropy_of_mean_hand():
    # mean of [1,0] and [0,1] = [0.5, 0.5] -> ln 2
    assert entropy_of_mean(np.array([[1.0, 0.0], [0.0, 1.0]])) == pytest.approx(math.log(2), abs=1e-15)
    # mean of [0.9,0.1] and [0.7,0.3] = [0.8, 0.2] -> -(0.8 ln 0.8 + 0.2 ln 0.2) = 0.1785148 + 0.3218876 = 0.5004024
    assert entropy_of_mean(np.array([[0.9, 0.1], [0.7, 0.3]])) == pytest.approx(0.5004024235, abs=1e-9)
    # a fully biased model: every row one-hot on class 1 -> 0 (0 ln 0 = 0, no NaN)
    assert entropy_of_mean(np.array([[0.0, 1.0, 0.0]] * 3)) == 0.0


def test_posterior_bias_hand():
    # mean prediction [0.8, 0.2], gold frequency [0.5, 0.5]
    # KL = 0.8 ln(0.8/0.5) + 0.2 ln(0.2/0.5) = 0.8 ln 1.6 + 0.2 ln 0.4 = 0.376003 - 0.183258 = 0.192745
    probs = np.array([[0.9, 0.1], [0.7, 0.3]])
    assert posterior_bias(probs, np.array([0, 1]), 2) == pytest.approx(0.1927447578, abs=1e-9)


def test_posterior_bias_zero_frequency_is_infinite():
    # gold frequency [1, 0] but mean prediction gives class 1 mass 0.2 -> KL = +inf (no epsilon)
    probs = np.array([[0.9, 0.1], [0.7, 0.3]])
    assert posterior_bias(probs, np.array([0, 0]), 2) == math.inf
    with pytest.raises(ZeroDivisionError):  # StaICC crashes instead
        staicc.post_bias_dl_metric([0, 0], probs.tolist())


def test_posterior_bias_zero_mean_prediction_term_is_zero():
    # mean prediction [1, 0], frequency [0.5, 0.5] -> 1 ln(1/0.5) + 0 = ln 2
    probs = np.array([[1.0, 0.0], [1.0, 0.0]])
    assert posterior_bias(probs, np.array([0, 1]), 2) == pytest.approx(math.log(2), abs=1e-15)
    # both zero for class 1: mean [1, 0], frequency [1, 0] -> 0
    assert posterior_bias(probs, np.array([0, 0]), 2) == 0.0
    with pytest.raises(ValueError, match="math domain error"):  # StaICC: log(0)
        staicc.post_bias_dl_metric([0, 1], probs.tolist())


def test_label_noise_slope_hand():
    # linear data: y = 0.5 + 0.4 x at x = 1, .75, .5, .25, 0 -> slope 0.4
    assert label_noise_slope(LABEL_NOISE_CORRECT_RATIOS, [0.9, 0.8, 0.7, 0.6, 0.5]) == pytest.approx(0.4)
    # y = [0.8, 0.8, 0.6, 0.5, 0.5]: x_bar = 0.5, dx = [.5, .25, 0, -.25, -.5]; y_bar = 0.64,
    # dy = [.16, .16, -.04, -.14, -.14]; Sxy = .08 + .04 + 0 + .035 + .07 = 0.225;
    # Sxx = .25 + .0625 + 0 + .0625 + .25 = 0.625; slope = 0.225 / 0.625 = 0.36
    assert label_noise_slope(LABEL_NOISE_CORRECT_RATIOS, [0.8, 0.8, 0.6, 0.5, 0.5]) == pytest.approx(0.36)


# ---------------------------------------------------------------------------- StaICC as oracle
@pytest.mark.parametrize(("seed", "n", "c"), [(0, 200, 2), (1, 300, 3), (2, 150, 5), (3, 256, 6)])
def test_classification_metrics_match_staicc_on_exactly_normalised_rows(seed, n, c):
    rng = np.random.default_rng(seed)
    probs = dyadic_rows(rng, n, c)
    assert probs.max(axis=1).max() < 1.0  # StaICC's ECE drops confidence-1.0 rows; keep them out here
    gold = rng.integers(0, c, size=n)
    g, p = gold.tolist(), probs.tolist()
    assert accuracy(probs, gold) == staicc.accuracy(g, p)
    assert macro_f1(probs, gold, c) == pytest.approx(staicc.macro_F1(g, p), abs=1e-12)
    assert true_label_likelihood(probs, gold) == pytest.approx(staicc.averaged_truelabel_likelihood(g, p), abs=1e-12)
    assert expected_calibration_error(probs, gold) == pytest.approx(
        staicc.expected_calibration_error_1(g, p), abs=1e-12
    )


@pytest.mark.parametrize("seed", range(4))
def test_macro_f1_matches_staicc_with_missing_classes(seed):
    # C = 5 but gold only uses classes 0..2 and predictions are skewed, so classes go missing
    rng = np.random.default_rng(100 + seed)
    probs = softmax_rows(rng.normal(size=(120, 5)) + np.array([2.0, 1.0, 0.0, -3.0, -9.0]))
    gold = rng.integers(0, 3, size=120)
    assert macro_f1(probs, gold, 5) == pytest.approx(staicc.macro_F1(gold.tolist(), probs.tolist()), abs=1e-12)


def test_staicc_resoftmaxes_rows_that_do_not_sum_exactly_to_one():
    # Documented StaICC bug: one row summing to 1 +- 1 ulp makes it softmax EVERY row again.
    rng = np.random.default_rng(7)
    probs = dyadic_rows(rng, 100, 3)
    probs[0] = [0.7, 0.2, 0.1]  # 0.7 + 0.2 + 0.1 == 0.9999999999999999 in Python floats
    assert sum(probs[0].tolist()) != 1.0
    assert not staicc.probability_matrix_check(probs.tolist())
    # a fairly good model: gold = argmax on 80 rows, random on 20
    gold = np.where(np.arange(100) < 80, probs.argmax(axis=1), rng.integers(0, 3, size=100))
    g, p = gold.tolist(), probs.tolist()
    resoftmaxed = softmax_rows(probs)

    # argmax-based metrics are unaffected
    assert accuracy(probs, gold) == staicc.accuracy(g, p)
    assert macro_f1(probs, gold, 3) == pytest.approx(staicc.macro_F1(g, p), abs=1e-12)

    # likelihood and ECE: StaICC reports the metric of softmax(probs); we report that of probs
    ours_tll, theirs_tll = true_label_likelihood(probs, gold), staicc.averaged_truelabel_likelihood(g, p)
    assert theirs_tll == pytest.approx(true_label_likelihood(resoftmaxed, gold), abs=1e-12)
    assert abs(ours_tll - theirs_tll) > 0.02
    ours_ece, theirs_ece = expected_calibration_error(probs, gold), staicc.expected_calibration_error_1(g, p)
    assert theirs_ece == pytest.approx(expected_calibration_error(resoftmaxed, gold), abs=1e-12)
    assert abs(ours_ece - theirs_ece) > 0.02

    # our values are those of the exactly-normalised rows (nothing is re-normalised or re-softmaxed)
    manual_tll = float(np.mean(probs[np.arange(100), gold]))
    assert ours_tll == pytest.approx(manual_tll, abs=1e-15)


def test_ece_confidence_one_rows_differ_from_staicc():
    # Documented StaICC quirk: its last bin is [0.9, 1.0), so one-hot rows fall in no bin.
    # 10 one-hot rows, 6 correct: ours = |6 - 10| / 10 = 0.4 ; StaICC = 0.0
    probs = np.eye(2)[[0] * 10]
    gold = np.array([0] * 6 + [1] * 4)
    assert expected_calibration_error(probs, gold) == pytest.approx(0.4, abs=1e-15)
    assert staicc.expected_calibration_error_1(gold.tolist(), probs.tolist()) == 0.0


@pytest.mark.parametrize(("seed", "q", "m", "c"), [(0, 100, 9, 2), (1, 128, 8, 3), (2, 100, 9, 6)])
def test_consistency_matches_staicc(seed, q, m, c):
    rng = np.random.default_rng(seed)
    # skewed label choice so that ties and large groups both happen
    preds = rng.choice(c, size=(q, m), p=np.linspace(1.0, 0.2, c) / np.linspace(1.0, 0.2, c).sum())
    # StaICC layout: flat list, entry t * Q + q is variant t of query q, as one-hot label rows
    onehot = np.eye(c)[preds.T.reshape(-1)].tolist()
    assert consistency(preds) == pytest.approx(staicc.consistency(None, onehot, loop_length=q), abs=1e-12)


@pytest.mark.parametrize(("seed", "c"), [(0, 2), (1, 4), (2, 6)])
def test_entropy_of_mean_matches_staicc_when_mean_sums_exactly_to_one(seed, c):
    # 64 dyadic rows: the mean is exact and sums to exactly 1.0, so StaICC does not re-softmax it
    rng = np.random.default_rng(seed)
    probs = dyadic_rows(rng, 64, c)
    assert sum(staicc.two_dimensional_list_mean(probs.tolist())) == 1.0
    assert entropy_of_mean(probs) == pytest.approx(staicc.bias_mean_entropy_metric(None, probs.tolist()), abs=1e-12)


def test_entropy_of_mean_differs_from_staicc_which_resoftmaxes_the_mean():
    # A strongly biased model: mean prediction about [0.9, 0.1]. Its float mean does not sum to exactly 1
    # and StaICC reports H(softmax(mean)) ~ H([0.69, 0.31]) ~ 0.62 instead of H(mean) ~ 0.33.
    rng = np.random.default_rng(3)
    first = rng.uniform(0.85, 0.95, size=1000)
    probs = np.stack([first, 1.0 - first], axis=1)
    mean = probs.mean(axis=0)
    assert sum(staicc.two_dimensional_list_mean(probs.tolist())) != 1.0
    theirs = staicc.bias_mean_entropy_metric(None, probs.tolist())
    ours = entropy_of_mean(probs)
    assert ours == pytest.approx(-np.sum(mean * np.log(mean)), abs=1e-12)
    assert theirs == pytest.approx(entropy_of_mean(softmax_rows(mean[None, :])), abs=1e-12)
    assert theirs - ours > 0.25


@pytest.mark.parametrize(("seed", "c"), [(0, 2), (1, 3), (2, 5)])
def test_posterior_bias_matches_staicc(seed, c):
    rng = np.random.default_rng(seed)
    probs = softmax_rows(rng.normal(size=(200, c)) + rng.normal(size=c))
    gold = np.concatenate([np.arange(c), rng.integers(0, c, size=200 - c)])  # every class present
    assert posterior_bias(probs, gold, c) == pytest.approx(
        staicc.post_bias_dl_metric(gold.tolist(), probs.tolist()), abs=1e-12
    )


@pytest.mark.parametrize("seed", range(3))
def test_label_noise_slope_matches_staicc_regression_with_same_x_but_not_staicc_gler_x(seed):
    values = np.random.default_rng(seed).uniform(0, 1, size=5).tolist()
    slope_ref, _ = staicc.linear_regression(list(LABEL_NOISE_CORRECT_RATIOS), values)
    assert label_noise_slope(LABEL_NOISE_CORRECT_RATIOS, values) == pytest.approx(slope_ref, abs=1e-12)
    # StaICC's GLER_experimentor builds x by arguments[-1] - i / 4 for i = 1..4:
    staicc_x = [1.0, 0.75, 0.25, -0.5, -1.5]
    buggy, _ = staicc.linear_regression(staicc_x, values)
    assert label_noise_slope(LABEL_NOISE_CORRECT_RATIOS, values) != pytest.approx(buggy, abs=1e-6)


def test_label_noise_slope_hand_against_staicc_gler_x():
    # y = [0.8, 0.8, 0.6, 0.5, 0.5] with StaICC's x = [1, .75, .25, -.5, -1.5]: x_bar = 0,
    # Sxy = .8 + .6 + .15 - .25 - .75 = 0.55, Sxx = 1 + .5625 + .0625 + .25 + 2.25 = 4.125 -> 0.1333...
    # (the true-ratio slope is 0.36, see test_label_noise_slope_hand)
    y = [0.8, 0.8, 0.6, 0.5, 0.5]
    assert staicc.linear_regression([1, 0.75, 0.25, -0.5, -1.5], y)[0] == pytest.approx(0.55 / 4.125)
    assert label_noise_slope([1, 0.75, 0.25, -0.5, -1.5], y) == pytest.approx(0.55 / 4.125)


# ------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "func",
    [
        lambda p, g: accuracy(p, g),
        lambda p, g: macro_f1(p, g, p.shape[1]),
        lambda p, g: true_label_likelihood(p, g),
        lambda p, g: expected_calibration_error(p, g),
        lambda p, g: posterior_bias(p, g, p.shape[1]),
        lambda p, g: entropy_of_mean(p),
    ],
)
def test_logits_are_rejected_not_softmaxed(func):
    logits = np.array([[2.0, -1.0], [0.5, 0.3]])
    with pytest.raises(ValueError):
        func(logits, np.array([0, 1]))
    unnormalised = np.array([[0.5, 0.3], [0.1, 0.1]])
    with pytest.raises(ValueError, match="sum to 1"):
        func(unnormalised, np.array([0, 1]))


def test_bad_inputs_raise():
    p = np.array([[0.6, 0.4], [0.3, 0.7]])
    with pytest.raises(ValueError):
        accuracy(p, np.array([0, 2]))  # label out of range
    with pytest.raises(ValueError):
        accuracy(p, np.array([0]))  # length mismatch
    with pytest.raises(ValueError):
        accuracy(p, np.array([0.0, 1.0]))  # float labels
    with pytest.raises(ValueError):
        accuracy(p[0], np.array([0]))  # 1-D probs
    with pytest.raises(ValueError):
        macro_f1(p, np.array([0, 1]), 3)  # num_classes mismatch
    with pytest.raises(ValueError):
        expected_calibration_error(p, np.array([0, 1]), bins=0)
    with pytest.raises(ValueError):
        consistency(np.array([0, 1, 1]))  # not 2-D
    with pytest.raises(ValueError):
        consistency(np.array([[0.0, 1.0]]))  # not integer
    with pytest.raises(ValueError):
        label_noise_slope([0.5, 0.5], [1.0, 2.0])  # degenerate x
    with pytest.raises(ValueError):
        label_noise_slope([1.0, 0.5], [1.0])  # length mismatch


def test_float32_softmax_rows_are_accepted():
    # float32 rows sum to 1 only within ~1e-7: accepted, and scored as the float64 values of the same numbers
    rng = np.random.default_rng(0)
    p32 = softmax_rows(rng.normal(size=(50, 4)).astype(np.float32))
    assert p32.dtype == np.float32 and np.any(p32.sum(axis=1, dtype=np.float64) != 1.0)
    gold = rng.integers(0, 4, size=50)
    assert expected_calibration_error(p32, gold) == pytest.approx(loop_ece(p32, gold), abs=1e-12)
    assert classification_metrics(p32, gold, 4) == classification_metrics(p32.astype(np.float64), gold, 4)


def test_percent():
    assert percent(0.5) == "50.00" and percent(0.0123) == "1.23" and percent(1.0) == "100.00"
    assert percent(None) == "-"  # a missing value


# ------------------------------------------------------------------------------------- properties
@settings(max_examples=75, deadline=None)
@given(probs_and_gold(), st.integers(1, 20))
def test_properties_of_classification_metrics(pg, bins):
    probs, gold = pg
    c = probs.shape[1]
    acc = accuracy(probs, gold)
    assert 0.0 <= acc <= 1.0
    assert 0.0 <= macro_f1(probs, gold, c) <= 1.0
    assert 0.0 <= true_label_likelihood(probs, gold) <= 1.0
    ece = expected_calibration_error(probs, gold, bins=bins)
    assert 0.0 <= ece <= 1.0
    assert ece == pytest.approx(loop_ece(probs, gold, bins), abs=1e-12)
    # with one bin ECE is |accuracy - mean confidence|; more bins can only increase it (triangle ineq.)
    one_bin = expected_calibration_error(probs, gold, bins=1)
    assert one_bin == pytest.approx(abs(acc - probs.max(axis=1).mean()), abs=1e-12)
    assert ece >= one_bin - 1e-12
    # the combined entry point (one check, one argmax) agrees exactly with the separate functions
    assert classification_metrics(probs, gold, c) == {
        "accuracy": acc,
        "macro_f1": macro_f1(probs, gold, c),
        "true_label_likelihood": true_label_likelihood(probs, gold),
        "ece": expected_calibration_error(probs, gold),
    }
    # permuting the rows changes nothing
    perm = np.random.default_rng(0).permutation(len(gold))
    assert expected_calibration_error(probs[perm], gold[perm], bins=bins) == pytest.approx(ece, abs=1e-12)
    assert 0.0 <= entropy_of_mean(probs) <= math.log(c) + 1e-12
    assert posterior_bias(probs, gold, c) >= 0.0


@settings(max_examples=75, deadline=None)
@given(
    st.integers(1, 30).flatmap(
        lambda q: st.integers(1, 10).flatmap(
            lambda m: st.lists(st.lists(st.integers(0, 4), min_size=m, max_size=m), min_size=q, max_size=q)
        )
    )
)
def test_properties_of_consistency(rows):
    preds = np.asarray(rows, dtype=np.int64)
    m = preds.shape[1]
    value = consistency(preds)
    assert 1.0 / m - 1e-12 <= value <= 1.0 + 1e-12
    # invariant to reordering the variants, and to relabelling
    assert consistency(preds[:, ::-1]) == pytest.approx(value)
    assert consistency(4 - preds) == pytest.approx(value)
    assert consistency(np.full_like(preds, 3)) == 1.0


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.floats(-10, 10), min_size=5, max_size=5),
    st.floats(-5, 5),
    st.floats(-5, 5),
)
def test_properties_of_label_noise_slope(noise, a, b):
    x = np.asarray(LABEL_NOISE_CORRECT_RATIOS)
    assert label_noise_slope(x, a * x + b) == pytest.approx(a, abs=1e-9)
    # adding a constant to every value does not change the slope
    y = np.asarray(noise)
    assert label_noise_slope(x, y + b) == pytest.approx(label_noise_slope(x, y), abs=1e-9)
