"""Contextual calibration (Zhao et al. 2021, "Calibrate Before Use", arXiv 2102.09690).

The model is asked for its label distribution on prompts whose query is content-free (``"N/A"``, ``""``
and ``"[MASK]"`` in the paper). Their mean, normalised to sum to 1, is p_cf. With W = diag(1 / p_cf) and
b = 0 a prediction p is calibrated to q = W p / sum(W p): each label probability is divided by the
model's prior for that label and the row is renormalised, so the content-free prediction itself becomes
uniform.

Reference points:

* The authors' code (``run_classification.py``: ``get_p_content_free``, ``eval_accuracy``) averages the
  three content-free inputs, normalises p_cf, and applies W p without a softmax (it only takes argmax).
* StaICC 0.1.1 ``prefabricate_inference.standard_calibration.contextual_calibration`` uses only the
  empty query ``""`` (its ``false_data_line``), averaged over 128 prompts with k = 4 demonstrations drawn
  from the calibration split; it starts its accumulator at 1e-5 per label (so its p_cf is
  (1e-5 + sum_m p_m) / M, not re-normalised) and returns ``softmax(p / p_cf)`` rather than the
  renormalised ``p / p_cf``. The argmax is the same as ours, the probabilities are not.

The prompt construction (which content-free strings, how many demonstration sets) belongs to the caller;
this module only does the arithmetic: one W for many predictions (``fit_contextual_calibration`` +
``apply_calibration``), or one p_cf per prediction for a whole batch at once (``calibrate_contextual``).
The other StaICC baselines (domain, batch, hidden, kNN) and the ``CALIBRATIONS`` registry are in
calibration_methods.py.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CONTENT_FREE_INPUTS", "apply_calibration", "calibrate_contextual", "fit_contextual_calibration"]

CONTENT_FREE_INPUTS: tuple[str, ...] = ("N/A", "", "[MASK]")
"""Content-free query texts of Zhao et al. 2021 (StaICC uses only ``""``)."""


def fit_contextual_calibration(content_free_probs: np.ndarray) -> np.ndarray:
    """Return W = diag(1 / p_cf), a (C, C) float64 array.

    ``content_free_probs`` is (M, C): the label distributions of M content-free prompts (a single (C,)
    row is accepted too). p_cf = their mean, normalised to sum to 1 (as in the authors' code; the
    normalisation does not change calibrated outputs, which are renormalised). Raises ValueError if any
    entry is negative or non-finite, or if some label has zero mean probability (W would be infinite).
    """
    cf = np.asarray(content_free_probs, dtype=np.float64)
    if cf.ndim == 1:
        cf = cf[None, :]
    if cf.ndim != 2 or cf.shape[0] == 0 or cf.shape[1] == 0:
        raise ValueError(f"content_free_probs must be a non-empty (M, C) array, got shape {cf.shape}")
    if not np.all(np.isfinite(cf)) or np.any(cf < 0):
        raise ValueError("content_free_probs must be finite and non-negative probabilities")
    p_cf = cf.mean(axis=0)
    if np.any(p_cf <= 0):
        zero = np.flatnonzero(p_cf <= 0).tolist()
        raise ValueError(f"content-free mean probability is 0 for labels {zero}; cannot calibrate")
    p_cf = p_cf / p_cf.sum()
    return np.diag(1.0 / p_cf)


def apply_calibration(probs: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Return the calibrated distributions q = W p / sum(W p), row by row, as float64.

    ``probs`` is (N, C) (or a single (C,) row, returned as (C,)); ``W`` is the (C, C) matrix from
    ``fit_contextual_calibration`` (any non-negative matrix works). No softmax is applied. Raises
    ValueError on shape mismatch, negative or non-finite input, or a row whose calibrated mass is 0.
    """
    p = np.asarray(probs, dtype=np.float64)
    w = np.asarray(W, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise ValueError(f"W must be a square (C, C) matrix, got shape {w.shape}")
    if p.ndim not in (1, 2) or p.shape[-1] != w.shape[0]:
        raise ValueError(f"probs must be (N, {w.shape[0]}) or ({w.shape[0]},), got shape {p.shape}")
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(w))):
        raise ValueError("probs and W must be finite")
    if np.any(p < 0) or np.any(w < 0):
        raise ValueError("probs and W must be non-negative")
    q = p @ w.T
    total = q.sum(axis=-1, keepdims=True)
    if np.any(total <= 0):
        raise ValueError("a calibrated row has no probability mass (all zero); cannot renormalise")
    return q / total


def calibrate_contextual(probs: np.ndarray, content_free_probs: np.ndarray) -> np.ndarray:
    """Calibrate each prediction with its own content-free prompts, for all N at once; (N, C) float64.

    ``probs`` is (N, C); ``content_free_probs`` is (N, M, C): row j holds the M content-free distributions
    of prediction j (e.g. the same demonstrations with a content-free query). Row j of the result equals
    ``apply_calibration(probs[j], fit_contextual_calibration(content_free_probs[j]))``: p_cf = the mean over
    the M rows, normalised; q = (p / p_cf) / sum(p / p_cf). Raises ValueError as those two do.
    """
    p = np.asarray(probs, dtype=np.float64)
    cf = np.asarray(content_free_probs, dtype=np.float64)
    if p.ndim != 2 or cf.ndim != 3 or cf.shape[0] != p.shape[0] or cf.shape[2] != p.shape[1] or 0 in cf.shape:
        raise ValueError(f"need probs (N, C) and content_free_probs (N, M, C), got {p.shape} and {cf.shape}")
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(cf))) or np.any(p < 0) or np.any(cf < 0):
        raise ValueError("probs and content_free_probs must be finite and non-negative probabilities")
    p_cf = cf.mean(axis=1)
    if np.any(p_cf <= 0):
        rows, labels = np.nonzero(p_cf <= 0)
        raise ValueError(f"content-free mean probability is 0 for label {labels[0]} of row {rows[0]}; cannot calibrate")
    p_cf = p_cf / p_cf.sum(axis=1, keepdims=True)
    q = p * (1.0 / p_cf)  # = p @ diag(1 / p_cf), bit for bit
    total = q.sum(axis=-1, keepdims=True)
    if np.any(total <= 0):
        raise ValueError("a calibrated row has no probability mass (all zero); cannot renormalise")
    return q / total
