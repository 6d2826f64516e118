"""Tests of abft.evaluation.calibration_methods (contextual, domain, batch, hidden and kNN calibration).

StaICC's ``standard_calibration`` is the oracle where it is right; where it is not, the test pins the
documented difference (the module docstring lists them). StaICC's trainable calibrators get a fake model
(feedforward functions that return fixed arrays) and a fake calibration set, so only their arithmetic runs.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from random_probs import distributions, softmax_rows
from StaICC.prefabricate_inference.standard_calibration import (
    batch_calibration,
    domain_calibration,
    hidden_calibration,
    knn_prompt,
)

from abft.evaluation import calibration_methods as cm
from abft.evaluation.calibration import apply_calibration, calibrate_contextual, fit_contextual_calibration
from abft.evaluation.calibration_methods import (
    CALIBRATIONS,
    calibrate,
    calibrate_batch,
    calibrate_hidden,
    calibrate_knn,
    fit_hidden_centroids,
)


class _CalibrationSet(list):
    """StaICC's calibration-set interface over rows ([text], label); row i's text is str(i) unless given."""

    def __init__(self, labels, label_space, texts=None):
        texts = texts or [str(i) for i in range(len(labels))]
        super().__init__(([t], int(y)) for t, y in zip(texts, labels, strict=True))
        self.label_space = label_space

    def get_label(self, index):
        return self.label_space[self[index][1]]

    def find_index_from_label(self, label):
        return self.label_space.index(label)

    def get_dataset_name(self):
        return "fake"


def _labels(c):
    return [f"l{i}" for i in range(c)]


# ------------------------------------------------------------------------------------------- registry
def test_registry_names_and_inputs():
    assert list(CALIBRATIONS) == ["contextual", "domain", "batch", "hidden", "knn"]
    assert CALIBRATIONS["contextual"].inputs == ("content_free_probs",)
    assert CALIBRATIONS["domain"].inputs == ("content_free_probs",)
    assert CALIBRATIONS["batch"].inputs == () and CALIBRATIONS["batch"].options == ("batch_size",)
    assert CALIBRATIONS["hidden"].inputs == ("hidden", "anchor_hidden", "anchor_labels")
    assert CALIBRATIONS["knn"].inputs == ("logits", "anchor_logits", "anchor_labels")
    assert CALIBRATIONS["knn"].options == ("k", "distance")
    for name, method in CALIBRATIONS.items():
        assert method.name == name and method.prompts and method.reference


def test_calibrate_refuses_bad_calls():
    p = np.array([[0.6, 0.4], [0.3, 0.7]])
    with pytest.raises(ValueError, match="unknown calibration"):
        calibrate("platt", p)
    with pytest.raises(ValueError, match="needs"):
        calibrate("contextual", p)
    with pytest.raises(ValueError, match="not"):
        calibrate("batch", p, batch_size=2, content_free_probs=p)
    with pytest.raises(ValueError):
        calibrate("batch", np.array([[0.5, -0.5]]))  # logits are not probabilities
    with pytest.raises(ValueError):
        calibrate("batch", np.array([[0.5, np.nan]]))
    with pytest.raises(ValueError):
        calibrate("batch", np.array([0.5, 0.5]))  # one row must still be (1, C)
    with pytest.raises(ValueError, match="one row per test prompt"):
        calibrate("hidden", p, hidden=np.zeros((3, 4)), anchor_hidden=np.zeros((2, 4)), anchor_labels=[0, 1])
    with pytest.raises(ValueError, match="one row per test prompt"):
        calibrate("knn", p, logits=np.zeros((3, 4)), anchor_logits=np.zeros((2, 4)), anchor_labels=[0, 1], k=1)


# ---------------------------------------------------------------------------------- contextual, domain
def test_content_free_shapes_dispatch():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(3), size=7)
    shared = rng.dirichlet(np.ones(3), size=5)
    own = rng.dirichlet(np.ones(3), size=(7, 4))
    for name in ("contextual", "domain"):
        np.testing.assert_array_equal(
            calibrate(name, p, content_free_probs=shared), apply_calibration(p, fit_contextual_calibration(shared))
        )
        np.testing.assert_array_equal(calibrate(name, p, content_free_probs=own), calibrate_contextual(p, own))
    with pytest.raises(ValueError):
        calibrate("domain", p, content_free_probs=shared[:, :2])
    with pytest.raises(ValueError):
        calibrate("domain", p, content_free_probs=shared[0])


@pytest.mark.parametrize(("seed", "m", "c"), [(0, 128, 2), (1, 40, 4)])
def test_domain_against_staicc(seed, m, c, capsys):
    rng = np.random.default_rng(seed)
    domain_probs = rng.dirichlet(np.full(c, 2.0) * rng.uniform(0.5, 2.0, size=c), size=m)
    probs = rng.dirichlet(np.ones(c), size=200)
    rows = iter(domain_probs.tolist())
    queries = []
    cal = domain_calibration(label_space=_labels(c))
    cal.train(
        default_prompt_maker=lambda demos, query: queries.append(query[0]) or "prompt",
        feedforward=lambda prompt, label_space: next(rows),
        calibration_set=_CalibrationSet([0, 1] * 8, _labels(c), texts=["good movie here", "a bad plot"] * 8),
        calibration_number=m,
        sample_length=6,
        k=4,
    )
    capsys.readouterr()  # StaICC prints a progress bar
    # StaICC's query: sample_length random words of the calibration texts
    assert len(queries) == m and all(len(q.split(" ")) == 6 for q in queries)
    assert set(" ".join(queries).split(" ")) <= {"good", "movie", "here", "a", "bad", "plot"}

    ours = calibrate("domain", probs, content_free_probs=domain_probs)
    theirs = np.array([cal.inference(p, None, None) for p in probs.tolist()])
    prior = np.asarray(cal.calibrationA)
    # the same prior up to StaICC's 1e-5 accumulator start: its p_cf is (1e-5 + sum_m p_m) / M
    np.testing.assert_allclose(prior, domain_probs.mean(axis=0), atol=1e-5 / m + 1e-12)
    np.testing.assert_array_equal(ours.argmax(axis=1), theirs.argmax(axis=1))
    # documented difference: StaICC softmax(p / p_cf), abft (p / p_cf) renormalised
    np.testing.assert_allclose(theirs, softmax_rows(probs / prior), rtol=1e-9)
    ratio = probs / domain_probs.mean(axis=0)
    np.testing.assert_allclose(ours, ratio / ratio.sum(axis=1, keepdims=True), rtol=1e-12)
    assert np.max(np.abs(ours - theirs)) > 0.05


# ---------------------------------------------------------------------------------------------- batch
def _chunk_priors(probs, size):
    """Each row's prior under StaICC's chunking: full chunks of `size`, then the remainder."""
    prior = np.empty_like(probs)
    for start in range(0, len(probs), size):
        prior[start : start + size] = probs[start : start + size].mean(axis=0)
    return prior


@pytest.mark.parametrize(("seed", "n", "c", "size"), [(0, 300, 3, 128), (1, 256, 5, 128), (2, 77, 2, 10)])
def test_batch_against_staicc(seed, n, c, size):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(c) * rng.uniform(0.3, 3.0, size=c), size=n)
    ours = calibrate("batch", probs, batch_size=size)
    theirs = np.array(batch_calibration(probs.tolist(), batch_size=size))
    prior = _chunk_priors(probs, size)
    # the same chunks and priors; StaICC subtracts the prior from the probabilities, abft divides by it
    np.testing.assert_allclose(theirs, softmax_rows(probs - prior), rtol=1e-12)
    ratio = probs / prior
    np.testing.assert_allclose(ours, ratio / ratio.sum(axis=1, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(ours, softmax_rows(np.log(probs) - np.log(prior)), rtol=1e-9)
    if c == 2:  # two labels: label 0 wins iff p_0 > prior_0 under both rules
        np.testing.assert_array_equal(ours.argmax(axis=1), theirs.argmax(axis=1))
    else:
        assert np.any(ours.argmax(axis=1) != theirs.argmax(axis=1))


def test_batch_hand_example():
    # prior = mean = [0.1, 0.45, 0.45]; row 0 = [0.15, 0.6, 0.25]:
    # p / prior = [1.5, 4/3, 5/9] -> label 0;  StaICC's p - prior = [0.05, 0.15, -0.2] -> label 1
    probs = np.array([[0.15, 0.6, 0.25], [0.05, 0.3, 0.65]])
    ours = calibrate_batch(probs, batch_size=None)
    ratio = np.array([1.5, 4 / 3, 5 / 9])
    np.testing.assert_allclose(ours[0], ratio / ratio.sum(), rtol=1e-12)
    assert ours[0].argmax() == 0
    assert np.argmax(batch_calibration(probs.tolist(), batch_size=2)[0]) == 1


@settings(max_examples=60, deadline=None)
@given(distributions(max_rows=8))
def test_batch_with_uniform_mean_changes_nothing(rows):
    c = rows.shape[1]
    probs = np.concatenate([np.roll(rows, s, axis=1) for s in range(c)])  # every label's column mean is 1/C
    np.testing.assert_allclose(calibrate_batch(probs, batch_size=None), probs, rtol=1e-9, atol=1e-15)


@settings(max_examples=60, deadline=None)
@given(distributions(max_rows=20), st.integers(1, 25))
def test_batch_properties(probs, size):
    out = calibrate_batch(probs, batch_size=size)
    assert out.shape == probs.shape and np.all(out >= 0)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-12)
    # each chunk is calibrated on its own
    for start in range(0, len(probs), size):
        chunk = probs[start : start + size]
        np.testing.assert_array_equal(out[start : start + size], calibrate_batch(chunk, batch_size=None))
    # a chunk of one row is its own prior: uniform
    np.testing.assert_allclose(calibrate_batch(probs[:1]), np.full((1, probs.shape[1]), 1 / probs.shape[1]))


def test_batch_bad_inputs():
    with pytest.raises(ValueError, match="zero mean probability"):
        calibrate_batch(np.array([[1.0, 0.0], [0.5, 0.0]]))
    for size in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            calibrate_batch(np.array([[0.5, 0.5]]), batch_size=size)


# --------------------------------------------------------------------------------------------- hidden
def _staicc_trained(calibrator, labels, features, calibration_number, capsys):
    """Train a StaICC hidden / kNN calibrator; the fake model returns features[row] for the query row.

    Returns the calibrator and the query rows in the order StaICC saw them (its anchors)."""
    seen = []

    def feedforward(prompt, label_space):
        seen.append(int(prompt))
        return None, features[int(prompt)].tolist()

    calibrator.train(
        lambda demos, query: query[0],  # the prompt is the query row's index
        feedforward,
        calibration_set=_CalibrationSet(labels, calibrator.label_space),
        calibration_number=calibration_number,
        k=4,
    )
    capsys.readouterr()
    return calibrator, np.array(seen)


@pytest.mark.parametrize(("seed", "c", "d"), [(0, 2, 8), (1, 4, 16)])
def test_hidden_against_staicc(seed, c, d, capsys):
    rng = np.random.default_rng(seed)
    labels = np.arange(60) % c
    states = rng.normal(size=(c, d))[labels] * 2.0 + rng.normal(size=(60, d))
    cal, rows = _staicc_trained(hidden_calibration(_labels(c)), labels, states, 64, capsys)
    assert not cal.failed

    centroids = fit_hidden_centroids(states[rows], labels[rows], c)
    np.testing.assert_allclose(centroids, np.array(cal.centroid), rtol=1e-12, atol=1e-12)
    test = rng.normal(size=(50, d)) * 2.0
    ours = calibrate(
        "hidden", np.full((50, c), 1 / c), hidden=test, anchor_hidden=states[rows], anchor_labels=labels[rows]
    )
    theirs = np.array([cal.inference(None, None, h.tolist()) for h in test])
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-15)  # no difference: StaICC is right here
    dist = np.linalg.norm(test[:, None, :] - centroids[None], axis=2)
    np.testing.assert_array_equal(ours.argmax(axis=1), dist.argmin(axis=1))


def test_hidden_missing_label_raises_where_staicc_falls_back(capsys):
    labels = np.array([0, 1] * 10)  # label 2 has no calibration row
    states = np.random.default_rng(0).normal(size=(20, 4))
    with pytest.warns(UserWarning):
        cal, rows = _staicc_trained(hidden_calibration(_labels(3)), labels, states, 16, capsys)
    assert cal.failed
    probs = [0.2, 0.3, 0.5]
    assert cal.inference(probs, None, states[0].tolist()) == probs  # StaICC: the uncalibrated prediction
    with pytest.raises(ValueError, match=r"labels \[2\] have no anchor"):
        fit_hidden_centroids(states[rows], labels[rows], 3)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 6), st.integers(1, 12), st.integers(0, 2**32 - 1))
def test_hidden_separated_clusters_are_all_correct(c, d, seed):
    rng = np.random.default_rng(seed)
    centres = np.eye(c, max(c, d)) * 100.0  # pairwise distance 141
    labels = np.repeat(np.arange(c), 5)
    anchors = centres[labels] + rng.uniform(-1, 1, size=(len(labels), centres.shape[1]))
    gold = rng.integers(0, c, size=30)
    test = centres[gold] + rng.uniform(-1, 1, size=(30, centres.shape[1]))
    out = calibrate_hidden(test, fit_hidden_centroids(anchors, labels, c))
    np.testing.assert_array_equal(out.argmax(axis=1), gold)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-12)


def test_hidden_hand_example_and_bad_inputs():
    centroids = fit_hidden_centroids(np.array([[0.0, 0.0], [2.0, 0.0], [3.0, 4.0]]), np.array([0, 0, 1]), 2)
    np.testing.assert_array_equal(centroids, [[1.0, 0.0], [3.0, 4.0]])
    # h = [1, 0]: distances [0, sqrt(20)] -> softmax([0, -sqrt(20)])
    out = calibrate_hidden(np.array([[1.0, 0.0]]), centroids)
    e = np.exp(-np.sqrt(20.0))
    np.testing.assert_allclose(out, [[1 / (1 + e), e / (1 + e)]], rtol=1e-12)
    with pytest.raises(ValueError):
        calibrate_hidden(np.array([[1.0, 0.0, 0.0]]), centroids)  # width mismatch
    with pytest.raises(ValueError):
        calibrate_hidden(np.array([[np.inf, 0.0]]), centroids)
    with pytest.raises(ValueError):
        fit_hidden_centroids(np.zeros((3, 2)), np.array([0, 1]), 2)  # one label per anchor
    with pytest.raises(ValueError):
        fit_hidden_centroids(np.zeros((2, 2)), np.array([0, 2]), 2)  # label out of range
    with pytest.raises(ValueError):
        fit_hidden_centroids(np.zeros((2, 2)), np.array([0.0, 1.0]), 2)  # not integer labels


# ------------------------------------------------------------------------------------------------ kNN
@pytest.mark.parametrize(("seed", "c", "v", "k"), [(0, 2, 30, 3), (1, 4, 50, 5), (2, 3, 20, 1)])
def test_knn_l2_against_staicc(seed, c, v, k, capsys):
    rng = np.random.default_rng(seed)
    labels = np.arange(40) % c
    logits = rng.normal(size=(c, v))[labels] + rng.normal(size=(40, v))
    cal, rows = _staicc_trained(knn_prompt(_labels(c), knn_k=k), labels, logits, 48, capsys)
    assert not cal.failed
    test = rng.normal(size=(60, v))
    p = np.full((60, c), 1 / c)
    ours = calibrate("knn", p, logits=test, anchor_logits=logits[rows], anchor_labels=labels[rows], k=k, distance="l2")
    theirs = np.array([cal.inference(None, t.tolist(), None) for t in test])
    # the same neighbours; StaICC returns softmax(votes), abft the vote fractions votes / k
    np.testing.assert_allclose(theirs, softmax_rows(ours * k), rtol=1e-12)
    np.testing.assert_allclose(ours * k, np.round(ours * k), atol=1e-12)
    np.testing.assert_array_equal(ours.argmax(axis=1), theirs.argmax(axis=1))
    if k > 1:
        assert np.max(np.abs(ours - theirs)) > 0.05


def _kl_reference(test_logits, anchor_logits):
    """KL(softmax(anchor) || softmax(test)) for every pair, term by term."""

    def log_softmax(z):
        z = z - z.max()
        return z - np.log(np.exp(z).sum())

    out = np.empty((len(test_logits), len(anchor_logits)))
    for i, t in enumerate(test_logits):
        lt = log_softmax(t)
        for a, z in enumerate(anchor_logits):
            la = log_softmax(z)
            out[i, a] = np.sum(np.exp(la) * (la - lt))
    return out


@pytest.mark.parametrize("k", [1, 3, 4])
def test_knn_kl_against_reference(k, monkeypatch):
    rng = np.random.default_rng(k)
    anchors, labels = rng.normal(size=(25, 40)) * 3.0, rng.integers(0, 3, size=25)
    test = rng.normal(size=(30, 40)) * 3.0
    dist = _kl_reference(test, anchors)
    assert np.all(dist > 0)
    expected = np.zeros((30, 3))
    for i, order in enumerate(np.argsort(dist, axis=1, kind="stable")[:, :k]):
        for a in order:
            expected[i, labels[a]] += 1 / k
    np.testing.assert_allclose(calibrate_knn(test, anchors, labels, 3, k=k), expected, rtol=1e-12)
    np.testing.assert_allclose(cm._knn_distances(test, anchors, "kl"), dist, rtol=1e-9, atol=1e-12)
    monkeypatch.setattr(cm, "_CHUNK_ROWS", 7)  # chunked over test rows: the same result
    np.testing.assert_allclose(calibrate_knn(test, anchors, labels, 3, k=k), expected, rtol=1e-12)


@pytest.mark.parametrize("distance", ["kl", "l2"])
def test_knn_k1_on_the_anchors_returns_their_labels(distance):
    rng = np.random.default_rng(5)
    anchors, labels = rng.normal(size=(30, 20)), rng.integers(0, 4, size=30)
    out = calibrate_knn(anchors, anchors, labels, 4, k=1, distance=distance)
    np.testing.assert_array_equal(out, np.eye(4)[labels])


def test_knn_kl_ignores_a_logit_shift_l2_does_not():
    # test = anchor 0 shifted by +5 in every logit: the same distribution as anchor 0 (label 0). Anchor 1
    # (label 1) is anchor 0 + 5 + noise: a different distribution but closer in raw-logit L2.
    rng = np.random.default_rng(0)
    a0 = rng.normal(size=50)
    anchors = np.stack([a0, a0 + 5.0 + 0.3 * rng.normal(size=50)])
    test = (a0 + 5.0)[None]
    np.testing.assert_array_equal(calibrate_knn(test, anchors, np.array([0, 1]), 2, k=1), [[1.0, 0.0]])
    np.testing.assert_array_equal(calibrate_knn(test, anchors, np.array([0, 1]), 2, k=1, distance="l2"), [[0.0, 1.0]])
    shifted = calibrate_knn(test - 17.0, anchors, np.array([0, 1]), 2, k=1)
    np.testing.assert_array_equal(shifted, [[1.0, 0.0]])


def test_knn_ties_and_missing_labels():
    anchors = np.array([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    # anchors 0 and 1 are equally near: the lower index (label 1) is taken first
    np.testing.assert_array_equal(
        calibrate_knn(np.array([[0.0, 1.0]]), anchors, np.array([1, 0, 0]), 3, k=1), [[0.0, 1.0, 0.0]]
    )
    # label 2 has no anchor: it gets no votes (no fallback to the uncalibrated prediction)
    out = calibrate_knn(np.array([[0.0, 1.0]]), anchors, np.array([1, 0, 0]), 3, k=3)
    np.testing.assert_allclose(out, [[2 / 3, 1 / 3, 0.0]])


def test_knn_bad_inputs():
    anchors, labels = np.zeros((3, 4)), np.array([0, 1, 1])
    test = np.zeros((2, 4))
    for k in (0, 4, 1.5, True):
        with pytest.raises(ValueError, match="k must be"):
            calibrate_knn(test, anchors, labels, 2, k=k)
    with pytest.raises(ValueError, match="distance"):
        calibrate_knn(test, anchors, labels, 2, distance="cosine")
    with pytest.raises(ValueError):
        calibrate_knn(np.zeros((2, 5)), anchors, labels, 2)  # vocabulary mismatch
    with pytest.raises(ValueError):
        calibrate_knn(np.full((2, 4), np.nan), anchors, labels, 2)
    with pytest.raises(ValueError):
        calibrate_knn(test, anchors, np.array([0, 1, 2]), 2)  # label out of range
    with pytest.raises(ValueError):
        calibrate_knn(test, anchors, np.array([0, 1]), 2)  # one label per anchor
    with pytest.raises(ValueError, match="num_classes"):
        calibrate_knn(test, anchors, labels, 0)
