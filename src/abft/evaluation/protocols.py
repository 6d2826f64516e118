"""Evaluation protocols: each scores its prompt sets and returns a dict of numbers for metrics.json.

    evaluate_prompts(model, prompts, label_token_ids, pad_id, C)   # the normal metrics of any prompts
    normal_test(model, tok, ds, cfg)             # the test prompts (--k, --test-samples)
    template_consistency(model, tok, ds, cfg)    # 9 templates (L9 array) x the first 100 test queries
    demo_consistency(model, tok, ds, cfg)        # the first 128 test queries x 8 demonstration sets
    generalization(model, tok, ds, cfg)          # the StaICC test prompts of the 8 paper datasets
    unseen_label(model, tok, ds, cfg)            # no demonstration has the gold label, vs normal and 0-shot
    bias(model, tok, ds, cfg)                    # contextual / domain / posterior bias, label-noise slopes
    calibration(model, tok, ds, cfg)             # the --calibration baselines (contextual, domain, ...)

Each protocol takes `cache=` (the stage's ScoreCache) and `sets=` (its prompt sets from prompt_sets.py,
as suites.check_suites builds them once per run); without them it makes its own. Definitions: docs in
/work/shared/reference/staicc-protocol.md, restated per function below.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import numpy as np

from abft.data import Dataset

from .calibration import CONTENT_FREE_INPUTS
from .calibration_methods import STAICC_BATCH_SIZE, STAICC_KNN_K, calibrate, calibrate_knn
from .metrics import classification_metrics, consistency, entropy_of_mean, label_noise_slope, posterior_bias
from .prompt_sets import (
    DOMAIN_CALIBRATION_WORDS,
    PromptSet,
    PromptSets,
    bias_sets,
    calibration_methods,
    calibration_sets,
    demo_sets,
    generalization_sets,
    normal_sets,
    template_sets,
    unseen_sets,
)
from .scoring import ScoreCache, Scorer, score_prompts
from .variants import DEMO_CONSISTENCY_SETS

NOISE_METRICS = ("accuracy", "macro_f1", "true_label_likelihood", "ece")


def recency_copy_rate(predictions: np.ndarray, prompts: Sequence) -> float:
    """Fraction of predictions equal to the last demonstration's label (the recency bias of small LMs)."""
    last = np.array([p.demo_labels[-1] if p.demo_labels else -1 for p in prompts])
    return float(np.mean(predictions == last))


def evaluate_prompts(
    model, prompts: Sequence, label_token_ids, pad_id: int, num_classes: int, batch_size=16, description="evaluating"
) -> tuple[dict, np.ndarray]:
    """Accuracy, macro-F1, true-label likelihood, ECE and the recency copy rate on `prompts`."""
    probs = score_prompts(model, prompts, label_token_ids, pad_id, batch_size, description)
    return prompt_metrics(probs, prompts, num_classes), probs


def prompt_metrics(probs: np.ndarray, prompts: Sequence, num_classes: int) -> dict:
    """The metrics of `evaluate_prompts` from already scored (N, C) label distributions of `prompts`."""
    gold = np.array([p.gold for p in prompts])
    result = classification_metrics(probs, gold, num_classes)
    result["copies_last_label"] = recency_copy_rate(probs.argmax(-1), prompts)
    result["prompts"] = len(prompts)
    result["accuracy_se"] = accuracy_se(result["accuracy"], len(prompts))
    return result


def accuracy_se(accuracy: float, n: int) -> float:
    """Standard error of an accuracy over n independent prompts (binomial)."""
    return math.sqrt(accuracy * (1 - accuracy) / n) if n else float("nan")


def _setup(model, tokenizer, dataset: Dataset, cfg, cache, sets, build) -> tuple[Scorer, dict]:
    """The stage's scorer (cache: shared, or a new one) and the prompt sets (`sets`, or built now)."""
    if sets is None:
        sets = build(PromptSets(tokenizer, cfg), dataset)
    return Scorer.create(model, tokenizer, cfg, cache), sets


def _evaluate(scorer: Scorer, s: PromptSet, description: str) -> tuple[dict, np.ndarray]:
    """evaluate_prompts's metrics of one set, and its (N, C) label distributions."""
    probs = scorer.probs(s.prompts, s.builder.label_token_ids, description)
    return prompt_metrics(probs, s.prompts, len(s.builder.label_words)), probs


# -------------------------------------------------------------------------------------- protocols
def normal_test(model, tokenizer, dataset: Dataset, cfg, *, cache: ScoreCache | None = None, sets=None) -> dict:
    """The normal test (evaluate_prompts's metrics) on the test prompts (--k, --test-samples, test_pairs)."""
    scorer, sets = _setup(model, tokenizer, dataset, cfg, cache, sets, normal_sets)
    return _evaluate(scorer, sets["normal"], f"test {dataset.info.name}")[0]


def template_consistency(
    model, tokenizer, dataset: Dataset, cfg, *, cache: ScoreCache | None = None, sets=None
) -> dict:
    """StaICC's template-consistency test: the first Q = min(100, --test-samples) test prompts (query i with
    demonstration list i) under the 9 templates of the L9 array (consistency_templates).

    consistency = mean over queries of (largest group of equal predictions) / 9; also accuracy per template.
    """
    scorer, sets = _setup(model, tokenizer, dataset, cfg, cache, sets, template_sets)
    preds, rows = [], []
    for name, s in sets.items():
        result, probs = _evaluate(scorer, s, f"{name} {dataset.info.name}")
        preds.append(probs.argmax(-1))
        rows.append({**dataclasses.asdict(s.template), "accuracy": result["accuracy"], "macro_f1": result["macro_f1"]})
    return {
        "consistency": consistency(np.stack(preds, axis=1)),
        "mean_accuracy": float(np.mean([r["accuracy"] for r in rows])),
        "queries": len(preds[0]),
        "templates": rows,
    }


def demo_consistency(model, tokenizer, dataset: Dataset, cfg, *, cache: ScoreCache | None = None, sets=None) -> dict:
    """StaICC's demonstration-consistency test: test query i (the first Q = min(128, --test-samples)) with
    demonstration lists i + 128 t, t = 0..7; consistency = mean over queries of (largest group of equal
    predictions) / 8. Also the accuracy over all Q x 8 prompts and per demonstration set t."""
    scorer, sets = _setup(model, tokenizer, dataset, cfg, cache, sets, demo_sets)
    result, probs = _evaluate(scorer, sets["demo"], f"demo {dataset.info.name}")
    preds = probs.argmax(-1).reshape(-1, DEMO_CONSISTENCY_SETS)  # (Q, 8): prompt i * 8 + t
    gold = np.array([p.gold for p in sets["demo"].prompts]).reshape(-1, DEMO_CONSISTENCY_SETS)
    return {
        "consistency": consistency(preds),
        "accuracy": result["accuracy"],
        "accuracy_per_set": [float(a) for a in (preds == gold).mean(axis=0)],
        "queries": preds.shape[0],
        "sets": DEMO_CONSISTENCY_SETS,
    }


def generalization(
    model,
    tokenizer,
    dataset: Dataset,
    cfg,
    *,
    cache: ScoreCache | None = None,
    sets=None,
    datasets: Sequence | None = None,
) -> dict:
    """The normal test protocol (--k, --test-samples) on each of `datasets` (default: the 8 paper datasets).

    The trained dataset is in-domain (evaluated too when it is not one of them); out-of-domain accuracy is
    the unweighted mean over the others.
    """
    build = functools.partial(generalization_sets, datasets=datasets)
    scorer, sets = _setup(model, tokenizer, dataset, cfg, cache, sets, build)
    per = {name: _evaluate(scorer, s, f"generalization {name}")[0] for name, s in sets.items()}
    inside = dataset.info.name
    outside = [r["accuracy"] for name, r in per.items() if name != inside]
    return {
        "in_domain": inside,
        "in_domain_accuracy": per[inside]["accuracy"],
        "out_of_domain_accuracy": float(np.mean(outside)) if outside else None,
        "datasets": per,
    }


def unseen_label(model, tokenizer, dataset: Dataset, cfg, *, cache: ScoreCache | None = None, sets=None) -> dict:
    """Metrics on the test prompts whose demonstrations all carry labels other than the query's gold label
    (unseen_label_pairs, StaICC's out-of-domain sampler), next to the normal test prompts and 0-shot."""
    scorer, sets = _setup(model, tokenizer, dataset, cfg, cache, sets, unseen_sets)
    return {name: _evaluate(scorer, s, f"{name} {dataset.info.name}")[0] for name, s in sets.items()}


def bias(model, tokenizer, dataset: Dataset, cfg, *, cache: ScoreCache | None = None, sets=None) -> dict:
    """Bias metrics in nats on the test prompts (--k, --test-samples):

    contextual bias = entropy of the mean prediction with an empty query; domain bias = the same with a
    query of 128 random demonstration words (domain_queries); posterior bias = KL(mean prediction || gold
    frequency) on the normal prompts (None when infinite: a predicted class never gold). ln C = no bias.
    label noise (GLER): metrics with a fraction r of correct demonstration labels, r = 1, .75, .5, .25, 0
    (int(k (1 - r)) demonstrations per prompt get label (y + 1) mod C), and the least-squares slope of each
    metric against the true fraction of correct labels; None when k = 0.
    """
    scorer, sets = _setup(model, tokenizer, dataset, cfg, cache, sets, bias_sets)
    name, c, k = dataset.info.name, len(dataset.info.label_words), cfg.data.k
    probs = {key: scorer.probs(s.prompts, s.builder.label_token_ids, f"bias-{key} {name}") for key, s in sets.items()}
    gold = np.array([p.gold for p in sets["normal"].prompts])
    posterior = posterior_bias(probs["normal"], gold, c)
    out = {
        "contextual_bias": entropy_of_mean(probs["contextual"]),
        "domain_bias": entropy_of_mean(probs["domain"]),
        "posterior_bias": posterior if math.isfinite(posterior) else None,
        "max_entropy": math.log(c),
        "contextual_distribution": probs["contextual"].mean(axis=0).tolist(),
        "domain_distribution": probs["domain"].mean(axis=0).tolist(),
        "mean_distribution": probs["normal"].mean(axis=0).tolist(),
        "gold_distribution": (np.bincount(gold, minlength=c) / len(gold)).tolist(),
        "label_noise": None,
    }
    noise = [(s, probs[key]) for key, s in sets.items() if s.wrong is not None]  # in order of the correct ratio
    if noise:
        ratios = [1.0 - s.wrong / k for s, _ in noise]
        levels = [classification_metrics(p, np.array([q.gold for q in s.prompts]), c) for s, p in noise]
        label_noise: dict = {"correct_ratios": ratios, "wrong_labels": [s.wrong for s, _ in noise]}
        label_noise.update({metric: [m[metric] for m in levels] for metric in NOISE_METRICS})
        label_noise["slope"] = {metric: label_noise_slope(ratios, label_noise[metric]) for metric in NOISE_METRICS}
        out["label_noise"] = label_noise
    return out


def calibration(model, tokenizer, dataset: Dataset, cfg, *, cache: ScoreCache | None = None, sets=None) -> dict:
    """The --calibration baselines (calibration_methods.CALIBRATIONS) on the same test prompts (--k,
    --test-samples): {"uncalibrated": metrics, <method>: metrics of its calibrated distributions, ...,
    "setup": {<method>: what it used}}. Extra prompts (calibration_sets) come from the demonstration split:

    contextual: each test prompt's query replaced by "N/A", "" and "[MASK]" (same demonstrations) gives that
    prompt's p_cf (the mean of the three); p -> (p / p_cf) / sum(p / p_cf). domain: the same with one p_cf, the
    mean over 128 prompts whose query is 64 random demonstration-split words. batch: the test predictions'
    mean in chunks of 128 is the prior. hidden: nearest label centroid of 128 anchor prompts' last-layer,
    last-position hidden states. knn: the labels of the 3 anchors nearest in full-vocabulary logits (KL).
    hidden is None (setup says why) when some label has no anchor.
    """
    methods = calibration_methods(cfg)
    scorer, sets = _setup(model, tokenizer, dataset, cfg, cache, sets, calibration_sets)
    name, normal = dataset.info.name, sets["normal"]
    c = len(normal.builder.label_words)
    calibrated, setup = _state_calibrations(scorer, sets, methods, name)
    before, probs = _evaluate(scorer, normal, f"calibration-test {name}")
    inputs = _content_free_inputs(scorer, sets, methods, name, setup)
    if "batch" in methods:
        inputs["batch"], setup["batch"] = {"batch_size": STAICC_BATCH_SIZE}, {"batch_size": STAICC_BATCH_SIZE}
    for method, kwargs in inputs.items():
        calibrated[method] = calibrate(method, probs, **kwargs)
    out: dict = {"uncalibrated": before}
    for method in methods:
        q = calibrated.get(method)
        out[method] = None if q is None else prompt_metrics(q, normal.prompts, c)
    out["setup"] = setup
    return out


def _content_free_inputs(scorer: Scorer, sets: dict, methods: list[str], name: str, setup: dict) -> dict:
    """calibrate's content_free_probs of contextual ((N, 3, C): per test prompt) and domain ((M, C))."""
    inputs = {}
    if "contextual" in methods:
        free = [
            scorer.probs(sets[f"content-free {t!r}"].prompts, _ids(sets), f"{t!r} {name}") for t in CONTENT_FREE_INPUTS
        ]
        cf = np.stack(free, axis=1)  # (N, 3, C)
        inputs["contextual"] = {"content_free_probs": cf}
        setup["contextual"] = {
            "content_free_inputs": list(CONTENT_FREE_INPUTS),
            "content_free_distribution": cf.mean(axis=(0, 1)).tolist(),
        }
    if "domain" in methods:
        dc = scorer.probs(sets["domain"].prompts, _ids(sets), f"domain-calibration {name}")  # (M, C)
        inputs["domain"] = {"content_free_probs": dc}
        setup["domain"] = {
            "prompts": len(dc),
            "query_words": DOMAIN_CALIBRATION_WORDS,
            "domain_distribution": dc.mean(axis=0).tolist(),
        }
    return inputs


def _state_calibrations(scorer: Scorer, sets: dict, methods: list[str], name: str) -> tuple[dict, dict]:
    """hidden and kNN calibrated (N, C) distributions of the test prompts (one forward over the anchors, one
    over the test prompts: hidden states and kNN votes, which keep one batch's full logits at a time), and
    their setup facts."""
    hidden, knn = "hidden" in methods, "knn" in methods
    if not (hidden or knn):
        return {}, {}
    anchors, c = sets["anchors"].prompts, len(sets["normal"].builder.label_words)
    labels = np.array([p.gold for p in anchors])
    counts = np.bincount(labels, minlength=c)
    keep = (lambda z: z) if knn else None
    a = scorer.states(anchors, _ids(sets), f"calibration-anchors {name}", hidden=hidden, logit_rows=keep)
    votes = (lambda z: calibrate_knn(z, a.logit_rows, labels, c, STAICC_KNN_K, "kl")) if knn else None
    test = scorer.states(
        sets["normal"].prompts, _ids(sets), f"calibration-states {name}", hidden=hidden, logit_rows=votes
    )
    out, setup = {}, {}
    facts = {"anchors": len(anchors), "anchor_label_counts": counts.tolist()}
    if knn:
        out["knn"] = test.logit_rows
        setup["knn"] = {**facts, "k": STAICC_KNN_K, "distance": "kl"}
    if hidden:
        missing = np.flatnonzero(counts == 0).tolist()
        setup["hidden"] = facts if not missing else {**facts, "skipped": f"labels {missing} have no anchor prompt"}
        if not missing:
            out["hidden"] = calibrate(
                "hidden", test.probs, hidden=test.hidden, anchor_hidden=a.hidden, anchor_labels=labels
            )
    return out, setup


def _ids(sets: dict) -> list[int]:
    return sets["normal"].builder.label_token_ids
