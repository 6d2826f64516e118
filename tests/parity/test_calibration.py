"""Tests of abft.evaluation.calibration (contextual calibration, Zhao et al. 2021).

StaICC's ``standard_calibration.contextual_calibration`` is used only as a test oracle.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from random_probs import distributions, softmax_rows
from StaICC.prefabricate_inference.standard_calibration import contextual_calibration

from abft.evaluation.calibration import apply_calibration, fit_contextual_calibration


def test_fit_hand():
    # content-free rows [0.6, 0.4] and [0.8, 0.2] -> p_cf = [0.7, 0.3] -> W = diag(1/0.7, 1/0.3)
    w = fit_contextual_calibration(np.array([[0.6, 0.4], [0.8, 0.2]]))
    np.testing.assert_allclose(w, np.diag([1 / 0.7, 1 / 0.3]), rtol=1e-12)
    assert w[0, 1] == 0.0 and w[1, 0] == 0.0


def test_fit_normalises_the_mean():
    # mean [0.2, 0.2] sums to 0.4 -> normalised p_cf = [0.5, 0.5] -> W = diag(2, 2)
    np.testing.assert_allclose(fit_contextual_calibration(np.array([[0.2, 0.2]])), np.diag([2.0, 2.0]))
    # a single (C,) row is accepted
    np.testing.assert_allclose(fit_contextual_calibration(np.array([0.25, 0.75])), np.diag([4.0, 4 / 3]))


def test_apply_hand_two_classes():
    w = np.diag([1 / 0.7, 1 / 0.3])  # p_cf = [0.7, 0.3]
    # p = [0.5, 0.5]: W p = [0.714286, 1.666667], sum 2.380952 -> [0.3, 0.7] (the prediction flips)
    np.testing.assert_allclose(apply_calibration(np.array([[0.5, 0.5]]), w), [[0.3, 0.7]], rtol=1e-12)
    # p = p_cf = [0.7, 0.3]: W p = [1, 1] -> [0.5, 0.5]
    np.testing.assert_allclose(apply_calibration(np.array([[0.7, 0.3]]), w), [[0.5, 0.5]], rtol=1e-12)


def test_apply_hand_three_classes_and_1d_row():
    # p_cf = [0.5, 0.25, 0.25], p = [0.4, 0.3, 0.3]:
    # W p = [0.4/0.5, 0.3/0.25, 0.3/0.25] = [0.8, 1.2, 1.2], sum 3.2 -> [0.25, 0.375, 0.375]
    w = fit_contextual_calibration(np.array([[0.5, 0.25, 0.25]]))
    out = apply_calibration(np.array([0.4, 0.3, 0.3]), w)
    assert out.shape == (3,)
    np.testing.assert_allclose(out, [0.25, 0.375, 0.375], rtol=1e-12)


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        fit_contextual_calibration(np.array([[0.5, 0.0], [0.5, 0.0]]))  # label with zero prior
    with pytest.raises(ValueError):
        fit_contextual_calibration(np.array([[1.2, -0.2]]))
    with pytest.raises(ValueError):
        fit_contextual_calibration(np.zeros((0, 2)))
    w = np.diag([2.0, 2.0])
    with pytest.raises(ValueError):
        apply_calibration(np.array([[0.2, 0.3, 0.5]]), w)  # width mismatch
    with pytest.raises(ValueError):
        apply_calibration(np.array([[0.0, 0.0]]), w)  # nothing to renormalise
    with pytest.raises(ValueError):
        apply_calibration(np.array([[0.5, 0.5]]), np.ones((2, 3)))


def _staicc_calibrator(content_free: np.ndarray) -> contextual_calibration:
    """Train StaICC's contextual calibration with a fake model that returns the given rows in order."""
    rows = iter(content_free.tolist())
    cal = contextual_calibration(label_space=[f"l{i}" for i in range(content_free.shape[1])])
    cal.train(
        default_prompt_maker=lambda demos, query: "prompt",
        feedforward=lambda prompt, label_space: next(rows),
        calibration_set=[(["text"], 0)] * 16,
        calibration_number=content_free.shape[0],
        k=4,
    )
    return cal


@pytest.mark.parametrize(("seed", "m", "c"), [(0, 128, 2), (1, 64, 3), (2, 32, 6)])
def test_against_staicc_contextual_calibration(seed, m, c, capsys):
    rng = np.random.default_rng(seed)
    content_free = rng.dirichlet(np.full(c, 2.0) * rng.uniform(0.5, 2.0, size=c), size=m)
    probs = rng.dirichlet(np.ones(c), size=300)
    cal = _staicc_calibrator(content_free)
    capsys.readouterr()  # StaICC prints a progress bar

    w = fit_contextual_calibration(content_free)
    ours = apply_calibration(probs, w)
    theirs = np.array([cal.inference(p, None, None) for p in probs.tolist()])

    # Same p_cf up to StaICC's 1e-5 accumulator start: its p_cf is (1e-5 + sum_m p_m) / M.
    np.testing.assert_allclose(1.0 / np.diag(w), np.asarray(cal.calibrationA), atol=1e-5 / m + 1e-12)
    # Same decisions (dividing by p_cf is what matters; softmax and renormalising are both monotone).
    np.testing.assert_array_equal(ours.argmax(axis=1), theirs.argmax(axis=1))
    # Different probabilities: StaICC returns softmax(p / p_cf), we return (p / p_cf) renormalised.
    ratio = probs / np.asarray(cal.calibrationA)
    np.testing.assert_allclose(theirs, softmax_rows(ratio), rtol=1e-9)
    np.testing.assert_allclose(ours, ratio / ratio.sum(axis=1, keepdims=True), rtol=1e-4)  # 1e-5 start
    assert np.max(np.abs(ours - theirs)) > 0.05


@settings(max_examples=75, deadline=None)
@given(distributions(), st.integers(1, 10))
def test_uniform_content_free_prediction_is_identity(probs, m):
    c = probs.shape[1]
    w = fit_contextual_calibration(np.full((m, c), 1.0 / c))
    np.testing.assert_allclose(apply_calibration(probs, w), probs, rtol=1e-12, atol=1e-15)


@settings(max_examples=75, deadline=None)
@given(st.integers(2, 6).flatmap(lambda c: st.tuples(distributions(c), distributions(c))))
def test_calibration_properties(content_free_and_probs):
    content_free, probs = content_free_and_probs  # the same number of classes C
    c = content_free.shape[1]
    w = fit_contextual_calibration(content_free)
    out = apply_calibration(probs, w)
    # outputs are distributions
    assert out.shape == probs.shape
    assert np.all(out >= 0)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-12)
    # the content-free mean itself is mapped to the uniform distribution
    p_cf = content_free.mean(axis=0)
    np.testing.assert_allclose(apply_calibration(p_cf, w), np.full(c, 1.0 / c), rtol=1e-9)
    # output ratios are the input ratios divided by the prior ratios
    np.testing.assert_allclose(out[:, 0] / out[:, 1], (probs[:, 0] / p_cf[0]) / (probs[:, 1] / p_cf[1]), rtol=1e-9)
