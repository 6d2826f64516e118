"""Every StaICC calibration baseline as pure numpy functions: contextual, domain, batch, hidden and kNN.

    from abft.evaluation.calibration_methods import CALIBRATIONS, calibrate
    q = calibrate("contextual", probs, content_free_probs=cf)   # cf: (M, C) one prior, or (N, M, C) per prompt
    q = calibrate("domain", probs, content_free_probs=dc)       # the same arithmetic, random-word queries
    q = calibrate("batch", probs)                                # the test batch is its own prior
    q = calibrate("hidden", probs, hidden=h, anchor_hidden=ah, anchor_labels=ay)
    q = calibrate("knn", probs, logits=z, anchor_logits=az, anchor_labels=ay)
    CALIBRATIONS["hidden"].inputs                                # ('hidden', 'anchor_hidden', 'anchor_labels')

``probs`` is always the (N, C) label distribution of the N test prompts (rows of non-negative numbers; the
prediction is the argmax) and every method returns an (N, C) float64 array of distributions (rows sum to 1),
ready for ``metrics.classification_metrics`` (hidden and kNN replace the prediction: they read only N and C
from ``probs``). Everything is float64 numpy; bad input (non-finite values, negative probabilities,
mismatched shapes, a label index outside [0, C)) raises ValueError.

What the caller builds (the model side; every extra prompt uses the test prompts' template and k, and takes
its query AND its demonstrations from the demonstration split, never from the test split; StaICC takes them
from its calibration split, which abft keeps for ABFT training):

* contextual (Zhao et al. 2021): the label distributions of content-free prompts, query ``"N/A"``, ``""``
  and ``"[MASK]"`` (``calibration.CONTENT_FREE_INPUTS``). Either each test prompt's own demonstrations with
  the M content-free queries -> ``content_free_probs`` (N, M, C) (what abft's contextual-calibration protocol
  does), or M prompts with demonstrations drawn from the demonstration split -> (M, C) (StaICC: M = 128
  prompts, k = 4, query ``""`` only).
* domain (Fei et al. 2023, "Mitigating Label Biases for In-context Learning"): the same, with a query of
  random in-domain words instead of a content-free string. StaICC: M = 128 prompts (k = 4 demonstrations
  each), each query 64 words, each word taken from a random row's text split on spaces
  (``variants.domain_queries(dataset, 128, length=64)`` draws such words from the demonstration split, with
  StaICC's off-by-one kept: it never picks a split's last row or a text's last word). The
  authors' code instead pools the lower-cased words of the unlabelled test texts and draws average-length + 1
  words, plus ``" ."``, for M = 20 queries with the test prompts' demonstrations; abft must not read test
  texts, so use the demonstration split's texts.
* batch (Zhou et al. 2024, "Batch Calibration"): nothing extra; the prior is the mean of the test
  predictions themselves, per consecutive chunk of ``batch_size`` prompts (StaICC: 128), in prompt order.
* hidden (Cho et al. 2024/25, "Token-based Decision Criteria Are Suboptimal in In-context Learning"): A
  labelled *anchor prompts*: a query from the demonstration split with k demonstrations from the demonstration
  split (not the query itself), built like a test prompt; record each one's last-layer hidden state at the
  last position (transformers: ``output_hidden_states=True``, ``hidden_states[-1][:, -1]``, after the final
  norm for most models; with left padding the last position is the last token) -> ``anchor_hidden`` (A, D),
  and its query's gold label -> ``anchor_labels`` (A,). The same hidden state of every test prompt ->
  ``hidden`` (N, D). StaICC: A = 128, k = 4 (it draws with repetition, so a query can sit among its own
  demonstrations; draw them disjoint). Every label needs at least one anchor.
* knn (Xu et al. 2023, "kNN Prompting"): the same anchor prompts, but record the model's full-vocabulary
  next-token logits at the last position -> ``anchor_logits`` (A, V) and the test prompts' -> ``logits``
  (N, V). Rows are independent: to bound memory (V is 32k-256k) call ``calibrate_knn`` on chunks of test
  rows and concatenate.

Differences from StaICC 0.1.1 (``prefabricate_inference.standard_calibration``), each a bug fixed here and
pinned by tests/parity/test_calibration_methods.py:

1. contextual, domain: StaICC's p_cf starts at 1e-5 per label and it returns softmax(p / p_cf) instead of the
   renormalised p / p_cf (see calibration.py). Same decisions, different probabilities.
2. batch: StaICC returns softmax(p - mean(p)), a difference of *probabilities*. abft removes the batch prior
   in log space, as contextual calibration removes p_cf: q = (p / prior) / sum(p / prior)
   = softmax(log p - log prior), prior = the chunk's mean probability. For two labels the decisions coincide
   (both pick label 0 iff p_0 > prior_0); from three labels on they can differ, and the probabilities do.
3. hidden: when some label has no calibration example StaICC warns and silently returns the *uncalibrated*
   probabilities; we raise ValueError. Otherwise identical: softmax(-||h - centroid_c||) (StaICC writes it
   as softmax(d_0 - d_c), the same numbers).
4. knn: StaICC ranks anchors by the L2 distance between raw logit vectors (its ``full_vocab_prob`` is the
   logits), which changes when a row's logits are shifted by a constant although the model's prediction does
   not; the paper ranks by KL(anchor distribution || test distribution) over the full vocabulary. We use KL
   (``distance="l2"`` keeps StaICC's ranking for comparison). StaICC returns softmax(vote counts) (e.g.
   [0.67, 0.24, 0.09] for votes [2, 1, 0]), we return the vote fractions counts / k ([2/3, 1/3, 0]); the
   argmax is the same. StaICC's failure fallback (a label without anchors) is dropped: kNN is defined
   without it (that label just gets no votes); k larger than the number of anchors raises (StaICC would count
   anchor 0 again). Ties: among equally distant anchors the lower index wins (as in StaICC); tied vote counts
   stay tied (the metrics' argmax takes the lowest label).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .calibration import apply_calibration, calibrate_contextual, fit_contextual_calibration

__all__ = [
    "CALIBRATIONS",
    "KNN_DISTANCES",
    "STAICC_BATCH_SIZE",
    "STAICC_KNN_K",
    "CalibrationMethod",
    "calibrate",
    "calibrate_batch",
    "calibrate_content_free",
    "calibrate_hidden",
    "calibrate_knn",
    "fit_hidden_centroids",
]

STAICC_BATCH_SIZE = 128
"""StaICC's ``batch_calibration`` chunk size."""

STAICC_KNN_K = 3
"""StaICC's ``knn_prompt`` number of neighbours."""

KNN_DISTANCES = ("kl", "l2")
"""kNN anchor rankings: KL(anchor || test) over the full vocabulary (Xu et al.), or L2 on raw logits (StaICC)."""

_CHUNK_ROWS = 256  # test rows per float64 block in calibrate_knn


# --------------------------------------------------------------------------------------------- checks
def _matrix(x: np.ndarray, name: str) -> np.ndarray:
    """``x`` as a finite float64 2-D array with at least one row and one column, else ValueError."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or 0 in a.shape:
        raise ValueError(f"{name} must be a non-empty 2-D array, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return a


def _probs(probs: np.ndarray, name: str = "probs") -> np.ndarray:
    """``probs`` as a float64 (N, C) array of finite non-negative numbers, else ValueError."""
    p = _matrix(probs, name)
    if np.any(p < 0):
        raise ValueError(f"{name} must be non-negative probabilities, not logits")
    return p


def _labels(labels: np.ndarray, n: int, num_classes: int, name: str = "anchor_labels") -> np.ndarray:
    """``labels`` as an int64 (n,) array of indices in [0, num_classes), else ValueError."""
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{name} must be a 1-D array of {n} labels (one per anchor), got shape {y.shape}")
    if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} must hold integer label indices, got dtype {y.dtype}")
    if n and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{name} must lie in [0, {num_classes}), got values in [{y.min()}, {y.max()}]")
    return y.astype(np.int64)


def _num_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    return int(num_classes)


def _renormalise(q: np.ndarray) -> np.ndarray:
    total = q.sum(axis=1, keepdims=True)
    if np.any(total <= 0):
        raise ValueError("a calibrated row has no probability mass (all zero); cannot renormalise")
    return q / total


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------------------- contextual, domain
def calibrate_content_free(probs: np.ndarray, content_free_probs: np.ndarray) -> np.ndarray:
    """Contextual or domain-context calibration: q = (p / p_cf) / sum(p / p_cf); (N, C) float64.

    ``content_free_probs`` (M, C): one prior, p_cf = the normalised mean of the M rows, for every test
    prompt. (N, M, C): row j's own prior from its own M rows (``calibration.calibrate_contextual``).
    """
    p = _probs(probs)
    cf = np.asarray(content_free_probs, dtype=np.float64)
    if cf.ndim == 3:
        return calibrate_contextual(p, cf)
    if cf.ndim != 2 or cf.shape[-1] != p.shape[1]:
        raise ValueError(f"content_free_probs must be (M, {p.shape[1]}) or (N, M, {p.shape[1]}), got {cf.shape}")
    return apply_calibration(p, fit_contextual_calibration(cf))


# ---------------------------------------------------------------------------------------------- batch
def calibrate_batch(probs: np.ndarray, batch_size: int | None = STAICC_BATCH_SIZE) -> np.ndarray:
    """Batch calibration (Zhou et al. 2024): each chunk of ``batch_size`` consecutive rows is its own prior.

    For a chunk B: prior = mean of B's rows; q = (p / prior) / sum(p / prior) = softmax(log p - log prior).
    Chunks as in StaICC: rows [0, b), [b, 2b), ..., then the remainder (a remainder of one row becomes
    uniform: it is its own prior). ``batch_size=None``: the whole set is one batch. (N, C) float64.
    Raises ValueError if a label has zero mean probability in a chunk (the prior would divide by zero).
    """
    p = _probs(probs)
    n = p.shape[0]
    if batch_size is None:
        batch_size = n
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    out = np.empty_like(p)
    for start in range(0, n, int(batch_size)):
        chunk = p[start : start + int(batch_size)]
        prior = chunk.mean(axis=0)
        if np.any(prior <= 0):
            zero = np.flatnonzero(prior <= 0).tolist()
            raise ValueError(f"labels {zero} have zero mean probability in rows {start}..; cannot batch-calibrate")
        out[start : start + len(chunk)] = _renormalise(chunk / prior)
    return out


# --------------------------------------------------------------------------------------------- hidden
def fit_hidden_centroids(anchor_hidden: np.ndarray, anchor_labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-label mean of the anchors' hidden states, a (C, D) float64 array.

    ``anchor_hidden`` (A, D), ``anchor_labels`` (A,) in [0, C). Raises ValueError if a label has no anchor
    (StaICC instead silently keeps the uncalibrated prediction).
    """
    h = _matrix(anchor_hidden, "anchor_hidden")
    c = _num_classes(num_classes)
    y = _labels(anchor_labels, h.shape[0], c)
    counts = np.bincount(y, minlength=c)
    if np.any(counts == 0):
        missing = np.flatnonzero(counts == 0).tolist()
        raise ValueError(f"labels {missing} have no anchor prompt; hidden calibration needs every label")
    sums = np.zeros((c, h.shape[1]))
    np.add.at(sums, y, h)
    return sums / counts[:, None]


def calibrate_hidden(hidden: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Hidden calibration (nearest centroid): q = softmax(-||h - centroid_c||_2) over labels c; (N, C) float64.

    ``hidden`` (N, D): the test prompts' last-token hidden states; ``centroids`` (C, D) from
    ``fit_hidden_centroids``. The argmax is the nearest centroid.
    """
    h = _matrix(hidden, "hidden")
    cen = _matrix(centroids, "centroids")
    if h.shape[1] != cen.shape[1]:
        raise ValueError(f"hidden has width {h.shape[1]} but the centroids have width {cen.shape[1]}")
    dist = np.stack([np.linalg.norm(h - cen[j], axis=1) for j in range(cen.shape[0])], axis=1)  # (N, C)
    return _softmax(-dist)


# ------------------------------------------------------------------------------------------------ kNN
def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _knn_distances(logits: np.ndarray, anchors: np.ndarray, distance: str) -> np.ndarray:
    """(n, A) distances from each test row to each anchor; ``logits`` and ``anchors`` are float64."""
    if distance == "kl":  # KL(P_a || Q_i) = sum_v P_a,v log P_a,v - sum_v P_a,v log Q_i,v
        log_a = _log_softmax(anchors)
        p_a = np.exp(log_a)
        return (p_a * log_a).sum(axis=1)[None, :] - _log_softmax(logits) @ p_a.T
    sq = (logits**2).sum(axis=1)[:, None] - 2.0 * logits @ anchors.T + (anchors**2).sum(axis=1)[None, :]
    return np.sqrt(np.maximum(sq, 0.0))


def calibrate_knn(
    logits: np.ndarray,
    anchor_logits: np.ndarray,
    anchor_labels: np.ndarray,
    num_classes: int,
    k: int = STAICC_KNN_K,
    distance: str = "kl",
) -> np.ndarray:
    """kNN prompting: the vote fractions of the k nearest anchors' labels; (N, C) float64.

    ``logits`` (N, V) and ``anchor_logits`` (A, V): full-vocabulary next-token logits at the last position
    (any dtype; converted to float64 ``_CHUNK_ROWS`` test rows at a time). ``distance="kl"`` ranks anchors by
    KL(softmax(anchor) || softmax(test)) (Xu et al.); ``"l2"`` by the L2 distance of the raw logits (StaICC).
    Equally distant anchors: the lower index first. Raises ValueError unless 1 <= k <= A.
    """
    if distance not in KNN_DISTANCES:
        raise ValueError(f"distance must be one of {KNN_DISTANCES}, got {distance!r}")
    c = _num_classes(num_classes)
    z = np.asarray(logits)
    a = _matrix(anchor_logits, "anchor_logits")
    if z.ndim != 2 or 0 in z.shape or z.shape[1] != a.shape[1]:
        raise ValueError(f"logits must be (N, {a.shape[1]}) like anchor_logits, got shape {z.shape}")
    if not np.all(np.isfinite(z)):
        raise ValueError("logits contains NaN or infinite values")
    y = _labels(anchor_labels, a.shape[0], c)
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= a.shape[0]:
        raise ValueError(f"k must be an integer in [1, {a.shape[0]}] (the number of anchors), got {k!r}")
    out = np.zeros((z.shape[0], c))
    for start in range(0, z.shape[0], _CHUNK_ROWS):
        dist = _knn_distances(np.asarray(z[start : start + _CHUNK_ROWS], dtype=np.float64), a, distance)
        nearest = np.argsort(dist, axis=1, kind="stable")[:, : int(k)]  # (n, k) anchor indices
        votes = out[start : start + len(dist)]
        for j in range(int(k)):
            np.add.at(votes, (np.arange(len(dist)), y[nearest[:, j]]), 1.0)
    return out / int(k)


# ------------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class CalibrationMethod:
    """One baseline: what ``calibrate(name, probs, **inputs)`` needs and what it computes.

    ``inputs``: the keyword arrays the caller must pass besides ``probs`` (see the module docstring for the
    prompts that produce them); ``options``: optional keywords with defaults; ``prompts``: a one-line summary
    of the extra model outputs; ``reference``: the paper.
    """

    name: str
    reference: str
    inputs: tuple[str, ...]
    options: tuple[str, ...]
    prompts: str
    function: Callable[..., np.ndarray]


def _hidden(probs: np.ndarray, hidden: np.ndarray, anchor_hidden: np.ndarray, anchor_labels: np.ndarray):
    c = probs.shape[1]
    h = np.asarray(hidden)
    if h.ndim != 2 or h.shape[0] != probs.shape[0]:
        raise ValueError(f"hidden must have one row per test prompt ({probs.shape[0]}), got shape {h.shape}")
    return calibrate_hidden(h, fit_hidden_centroids(anchor_hidden, anchor_labels, c))


def _knn(probs, logits, anchor_logits, anchor_labels, k: int = STAICC_KNN_K, distance: str = "kl"):
    z = np.asarray(logits)
    if z.ndim != 2 or z.shape[0] != probs.shape[0]:
        raise ValueError(f"logits must have one row per test prompt ({probs.shape[0]}), got shape {z.shape}")
    return calibrate_knn(z, anchor_logits, anchor_labels, probs.shape[1], k=k, distance=distance)


CALIBRATIONS: dict[str, CalibrationMethod] = {
    m.name: m
    for m in (
        CalibrationMethod(
            "contextual",
            "Zhao et al. 2021, Calibrate Before Use (arXiv 2102.09690)",
            ("content_free_probs",),
            (),
            "label probs of prompts whose query is 'N/A' / '' / '[MASK]': (M, C) or per test prompt (N, M, C)",
            calibrate_content_free,
        ),
        CalibrationMethod(
            "domain",
            "Fei et al. 2023, Mitigating Label Biases for In-context Learning (arXiv 2305.19148)",
            ("content_free_probs",),
            (),
            "label probs of prompts whose query is random demonstration-split words: (M, C) or (N, M, C)",
            calibrate_content_free,
        ),
        CalibrationMethod(
            "batch",
            "Zhou et al. 2024, Batch Calibration (arXiv 2309.17249)",
            (),
            ("batch_size",),
            "nothing extra: the test predictions are their own prior",
            calibrate_batch,
        ),
        CalibrationMethod(
            "hidden",
            "Cho et al., Token-based Decision Criteria Are Suboptimal in In-context Learning (arXiv 2406.16535)",
            ("hidden", "anchor_hidden", "anchor_labels"),
            (),
            "last-token last-layer hidden states of the test prompts (N, D) and of labelled anchor prompts (A, D)",
            _hidden,
        ),
        CalibrationMethod(
            "knn",
            "Xu et al. 2023, kNN Prompting (arXiv 2303.13824)",
            ("logits", "anchor_logits", "anchor_labels"),
            ("k", "distance"),
            "full-vocabulary last-token logits of the test prompts (N, V) and of labelled anchor prompts (A, V)",
            _knn,
        ),
    )
}
"""The baselines by name (the values ``--calibration`` takes)."""


def calibrate(name: str, probs: np.ndarray, **inputs) -> np.ndarray:
    """Fit and apply the baseline ``name`` to the (N, C) test label probabilities; (N, C) float64.

    ``inputs`` are the arrays named by ``CALIBRATIONS[name].inputs`` plus any of its ``options``. Raises
    ValueError on an unknown name, a missing or unexpected keyword, or bad arrays.
    """
    if name not in CALIBRATIONS:
        raise ValueError(f"unknown calibration {name!r}; choose from {sorted(CALIBRATIONS)}")
    method = CALIBRATIONS[name]
    missing = [k for k in method.inputs if k not in inputs]
    if missing:
        raise ValueError(f"{name} calibration needs {missing} ({method.prompts})")
    extra = sorted(set(inputs) - set(method.inputs) - set(method.options))
    if extra:
        raise ValueError(f"{name} calibration takes {list(method.inputs + method.options)}, not {extra}")
    return method.function(_probs(probs), **inputs)
