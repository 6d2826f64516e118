"""Robustness, generalization, bias and calibration protocols: each `(model, tokenizer, dataset, cfg) -> dict`.

    template_consistency(model, tok, ds, cfg)    # 9 templates (L9 array) x the first 100 test queries
    demo_consistency(model, tok, ds, cfg)        # the first 128 test queries x 8 demonstration sets
    generalization(model, tok, ds, cfg)          # the StaICC test prompts of the 8 paper datasets
    unseen_label(model, tok, ds, cfg)            # no demonstration has the gold label, vs normal and 0-shot
    bias(model, tok, ds, cfg)                    # contextual / domain / posterior bias, label-noise slopes
    contextual_calibration(model, tok, ds, cfg)  # the Zhao et al. (2021) baseline on the test prompts
    run_suites(model, tok, ds, cfg)              # the ones cfg.eval selects, keyed as in metrics.json

Every protocol builds its prompts with PromptBuilder (the dataset's default template unless it varies the
template) and scores them with score_prompts; sizes follow `--k` and `--test-samples` (the template test
uses at most 100 queries, the demonstration test at most 128). A ScoreCache shared by the protocols of one
stage scores each distinct prompt once: the normal test prompts reappear in the unseen-label, bias,
calibration and generalization protocols, and the first test prompts in both consistency tests.
Definitions: docs in /work/shared/reference/staicc-protocol.md, restated per function below.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from abft.data import (
    PAPER_DATASETS,
    Dataset,
    PromptBuilder,
    consistency_templates,
    default_template,
    load_dataset,
    test_pairs,
)
from abft.errors import UserError

from .calibration import CONTENT_FREE_INPUTS, apply_calibration, fit_contextual_calibration
from .metrics import (
    LABEL_NOISE_CORRECT_RATIOS,
    classification_metrics,
    consistency,
    entropy_of_mean,
    label_noise_slope,
    posterior_bias,
)
from .protocols import prompt_metrics
from .scoring import score_prompts
from .variants import (
    DEMO_CONSISTENCY_SETS,
    demo_consistency_pairs,
    domain_queries,
    unseen_label_pairs,
    wrong_label_positions,
)

TEMPLATE_QUERIES = 100
NOISE_METRICS = ("accuracy", "macro_f1", "true_label_likelihood", "ece")


class ScoreCache:
    """Label distributions already computed in one stage, keyed by (prompt token ids, label token ids).

    Only valid while the model does not change: make one per stage (before / after training).
    """

    def __init__(self) -> None:
        self._rows: dict[tuple[bytes, tuple[int, ...]], np.ndarray] = {}

    @staticmethod
    def key(prompt, label_token_ids: Sequence[int]) -> tuple[bytes, tuple[int, ...]]:
        return np.asarray(prompt.input_ids, dtype=np.int64).tobytes(), tuple(int(i) for i in label_token_ids)

    def add(self, prompts: Sequence, label_token_ids: Sequence[int], probs: np.ndarray) -> None:
        for prompt, row in zip(prompts, probs, strict=True):
            self._rows[self.key(prompt, label_token_ids)] = np.asarray(row, dtype=np.float64)

    def __contains__(self, key) -> bool:
        return key in self._rows

    def __getitem__(self, key) -> np.ndarray:
        return self._rows[key]

    def __len__(self) -> int:
        return len(self._rows)


@dataclass
class _Env:
    """What every protocol needs besides the dataset: the model, tokenizer, config and this stage's cache."""

    model: object
    tokenizer: object
    cfg: object
    cache: ScoreCache | None = None

    def __post_init__(self) -> None:
        if self.cache is None:
            self.cache = ScoreCache()

    def builder(self, info, template=None) -> PromptBuilder:
        template = template or default_template(info)
        return PromptBuilder(self.tokenizer, info.label_words, template, self.cfg.data.label_token_mode)

    def probs(self, builder: PromptBuilder, prompts: Sequence, description: str) -> np.ndarray:
        """(N, C) label distributions of `prompts`, scoring only those not yet in the cache (each once)."""
        args = (builder.label_token_ids, self.tokenizer.pad_token_id, self.cfg.eval.eval_batch_size, description)
        keys = [ScoreCache.key(p, builder.label_token_ids) for p in prompts]
        todo: dict = {}
        for i, key in enumerate(keys):
            if key not in self.cache:
                todo.setdefault(key, i)
        if todo:
            new = [prompts[i] for i in todo.values()]
            self.cache.add(new, builder.label_token_ids, score_prompts(self.model, new, *args))
        return np.stack([self.cache[key] for key in keys]) if keys else np.zeros((0, len(builder.label_words)))

    def evaluate(self, builder: PromptBuilder, prompts: Sequence, description: str) -> tuple[dict, np.ndarray]:
        probs = self.probs(builder, prompts, description)
        return prompt_metrics(probs, prompts, len(builder.label_words)), probs


def _n(cfg) -> int:
    return cfg.data.test_samples


def _with_queries(builder: PromptBuilder, dataset: Dataset, pairs, texts: Sequence[str]) -> list:
    """The prompts of `pairs` with each query text replaced (the gold label is kept)."""
    rows = dataset.rows
    return builder.build_many(
        [([rows[i] for i in demos], (text, rows[q][1])) for (demos, q), text in zip(pairs, texts, strict=True)]
    )


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


# ------------------------------------------------------------------------------------ prompt sets
# Each returns {set name: (builder, prompts)}; check_suites builds them all before a run starts.
def _template_sets(env: _Env, dataset: Dataset) -> dict:
    q = min(TEMPLATE_QUERIES, _n(env.cfg), len(dataset.test))
    pairs = test_pairs(dataset, env.cfg.data.k, q)
    out = {}
    for t, template in enumerate(consistency_templates(dataset.info)):
        builder = env.builder(dataset.info, template)
        out[f"template {t}"] = (builder, builder.build_pairs(dataset, pairs))
    return out


def _demo_sets(env: _Env, dataset: Dataset) -> dict:
    rows = demo_consistency_pairs(dataset, env.cfg.data.k, _n(env.cfg))
    builder = env.builder(dataset.info)
    return {"demo": (builder, builder.build_pairs(dataset, [pair for row in rows for pair in row]))}  # i * 8 + t


def _generalization_sets(env: _Env, dataset: Dataset, datasets: Sequence | None = None) -> dict:
    out = {}
    for item in _generalization_datasets(dataset, datasets):
        builder = env.builder(item.info)
        out[item.info.name] = (builder, builder.build_pairs(item, test_pairs(item, env.cfg.data.k, _n(env.cfg))))
    return out


def _generalization_datasets(dataset: Dataset, datasets: Sequence | None) -> list[Dataset]:
    """The trained dataset first when it is not one of `datasets` (default: the 8 paper datasets), then those."""
    items = [d if isinstance(d, Dataset) else load_dataset(d) for d in (datasets or PAPER_DATASETS)]
    same = [d for d in items if d.info == dataset.info]
    return items if same else [dataset, *items]


def _unseen_sets(env: _Env, dataset: Dataset) -> dict:
    k, n = env.cfg.data.k, _n(env.cfg)
    builder = env.builder(dataset.info)
    return {
        "normal": (builder, builder.build_pairs(dataset, test_pairs(dataset, k, n))),
        "unseen_label": (builder, builder.build_pairs(dataset, unseen_label_pairs(dataset, k, n))),
        "zero_shot": (builder, builder.build_pairs(dataset, test_pairs(dataset, 0, n))),
    }


def _wrong_counts(k: int) -> list[int]:
    """Wrong demonstration labels per prompt at each correct ratio r (StaICC: int(k * wrong rate))."""
    return [int(k * (1.0 - r)) for r in LABEL_NOISE_CORRECT_RATIOS]


def _bias_sets(env: _Env, dataset: Dataset) -> dict:
    k, n = env.cfg.data.k, _n(env.cfg)
    builder = env.builder(dataset.info)
    pairs = test_pairs(dataset, k, n)
    out = {
        "normal": (builder, builder.build_pairs(dataset, pairs)),
        "contextual": (builder, _with_queries(builder, dataset, pairs, [""] * n)),
        "domain": (builder, _with_queries(builder, dataset, pairs, domain_queries(dataset, n))),
    }
    if k == 0:
        return out  # no demonstration label to corrupt
    rows, c = dataset.rows, len(dataset.info.label_words)
    counts = _wrong_counts(k)
    for level, wrong in enumerate(wrong_label_positions(k, n, counts, len(dataset.test))):
        examples = [
            (
                [(rows[i][0], (rows[i][1] + 1) % c if pos in wrong[j] else rows[i][1]) for pos, i in enumerate(demos)],
                rows[q],
            )
            for j, (demos, q) in enumerate(pairs)
        ]
        out[f"noise {level}"] = (builder, builder.build_many(examples))
    return out


def _calibration_sets(env: _Env, dataset: Dataset) -> dict:
    k, n = env.cfg.data.k, _n(env.cfg)
    builder = env.builder(dataset.info)
    pairs = test_pairs(dataset, k, n)
    out = {"normal": (builder, builder.build_pairs(dataset, pairs))}
    for text in CONTENT_FREE_INPUTS:
        out[f"content-free {text!r}"] = (builder, _with_queries(builder, dataset, pairs, [text] * n))
    return out


# -------------------------------------------------------------------------------------- protocols
def template_consistency(model, tokenizer, dataset: Dataset, cfg, *, cache: ScoreCache | None = None) -> dict:
    """StaICC's template-consistency test: the first Q = min(100, --test-samples) test prompts (query i with
    demonstration list i) under the 9 templates of the L9 array (consistency_templates).

    consistency = mean over queries of (largest group of equal predictions) / 9; also accuracy per template.
    """
    env = _Env(model, tokenizer, cfg, cache)
    sets = _template_sets(env, dataset)
    templates = consistency_templates(dataset.info)
    preds, rows = [], []
    for t, (name, (builder, prompts)) in enumerate(sets.items()):
        result, probs = env.evaluate(builder, prompts, f"{name} {dataset.info.name}")
        preds.append(probs.argmax(-1))
        tpl = templates[t]
        rows.append(
            {
                "instruction": tpl.instruction,
                "input_prefix": tpl.input_prefix,
                "label_prefix": tpl.label_prefix,
                "label_affix": tpl.label_affix,
                "accuracy": result["accuracy"],
                "macro_f1": result["macro_f1"],
            }
        )
    return {
        "consistency": consistency(np.stack(preds, axis=1)),
        "mean_accuracy": float(np.mean([r["accuracy"] for r in rows])),
        "queries": len(preds[0]),
        "templates": rows,
    }


def demo_consistency(model, tokenizer, dataset: Dataset, cfg, *, cache: ScoreCache | None = None) -> dict:
    """StaICC's demonstration-consistency test: test query i (the first Q = min(128, --test-samples)) with
    demonstration lists i + 128 t, t = 0..7; consistency = mean over queries of (largest group of equal
    predictions) / 8. Also the accuracy over all Q x 8 prompts and per demonstration set t."""
    env = _Env(model, tokenizer, cfg, cache)
    builder, prompts = _demo_sets(env, dataset)["demo"]
    result, probs = env.evaluate(builder, prompts, f"demo {dataset.info.name}")
    preds = probs.argmax(-1).reshape(-1, DEMO_CONSISTENCY_SETS)  # (Q, 8): prompt i * 8 + t
    gold = np.array([p.gold for p in prompts]).reshape(-1, DEMO_CONSISTENCY_SETS)
    return {
        "consistency": consistency(preds),
        "accuracy": result["accuracy"],
        "accuracy_per_set": [float(a) for a in (preds == gold).mean(axis=0)],
        "queries": preds.shape[0],
        "sets": DEMO_CONSISTENCY_SETS,
    }


def generalization(
    model, tokenizer, dataset: Dataset, cfg, *, cache: ScoreCache | None = None, datasets: Sequence | None = None
) -> dict:
    """The normal test protocol (--k, --test-samples) on each of `datasets` (default: the 8 paper datasets).

    The trained dataset is in-domain (evaluated too when it is not one of them); out-of-domain accuracy is
    the unweighted mean over the others.
    """
    env = _Env(model, tokenizer, cfg, cache)
    per = {}
    for name, (builder, prompts) in _generalization_sets(env, dataset, datasets).items():
        per[name], _ = env.evaluate(builder, prompts, f"generalization {name}")
    inside = dataset.info.name
    outside = [r["accuracy"] for name, r in per.items() if name != inside]
    return {
        "in_domain": inside,
        "in_domain_accuracy": per[inside]["accuracy"],
        "out_of_domain_accuracy": float(np.mean(outside)) if outside else None,
        "datasets": per,
    }


def unseen_label(model, tokenizer, dataset: Dataset, cfg, *, cache: ScoreCache | None = None) -> dict:
    """Metrics on the test prompts whose demonstrations all carry labels other than the query's gold label
    (unseen_label_pairs, StaICC's out-of-domain sampler), next to the normal test prompts and 0-shot."""
    env = _Env(model, tokenizer, cfg, cache)
    out = {}
    for name, (builder, prompts) in _unseen_sets(env, dataset).items():
        out[name], _ = env.evaluate(builder, prompts, f"{name} {dataset.info.name}")
    return out


def bias(model, tokenizer, dataset: Dataset, cfg, *, cache: ScoreCache | None = None) -> dict:
    """Bias metrics in nats on the test prompts (--k, --test-samples):

    contextual bias = entropy of the mean prediction with an empty query; domain bias = the same with a
    query of 128 random demonstration words (domain_queries); posterior bias = KL(mean prediction || gold
    frequency) on the normal prompts (None when infinite: a predicted class never gold). ln C = no bias.
    label noise (GLER): metrics with a fraction r of correct demonstration labels, r = 1, .75, .5, .25, 0
    (int(k (1 - r)) demonstrations per prompt get label (y + 1) mod C), and the least-squares slope of each
    metric against the true fraction of correct labels; None when k = 0.
    """
    env = _Env(model, tokenizer, cfg, cache)
    sets = _bias_sets(env, dataset)
    name, c = dataset.info.name, len(dataset.info.label_words)
    probs = {key: env.probs(b, p, f"bias-{key} {name}") for key, (b, p) in sets.items() if not key.startswith("noise")}
    gold = np.array([p.gold for p in sets["normal"][1]])
    out = {
        "contextual_bias": entropy_of_mean(probs["contextual"]),
        "domain_bias": entropy_of_mean(probs["domain"]),
        "posterior_bias": _finite(posterior_bias(probs["normal"], gold, c)),
        "max_entropy": math.log(c),
        "contextual_distribution": probs["contextual"].mean(axis=0).tolist(),
        "domain_distribution": probs["domain"].mean(axis=0).tolist(),
        "mean_distribution": probs["normal"].mean(axis=0).tolist(),
        "gold_distribution": (np.bincount(gold, minlength=c) / len(gold)).tolist(),
        "label_noise": None,
    }
    k = cfg.data.k
    if k > 0:
        ratios = [1.0 - w / k for w in _wrong_counts(k)]
        levels = []
        for level in range(len(ratios)):
            builder, prompts = sets[f"noise {level}"]
            p = env.probs(builder, prompts, f"bias-noise {level} {name}")
            levels.append(classification_metrics(p, np.array([q.gold for q in prompts]), c))
        noise: dict = {"correct_ratios": ratios, "wrong_labels": _wrong_counts(k)}
        for metric in NOISE_METRICS:
            noise[metric] = [m[metric] for m in levels]
        noise["slope"] = {metric: label_noise_slope(ratios, noise[metric]) for metric in NOISE_METRICS}
        out["label_noise"] = noise
    return out


def contextual_calibration(model, tokenizer, dataset: Dataset, cfg, *, cache: ScoreCache | None = None) -> dict:
    """Contextual calibration (Zhao et al. 2021) of the test prompts (--k, --test-samples).

    For each test prompt the query text is replaced by each content-free input ("N/A", "", "[MASK]") with
    the same demonstrations and template; p_cf of that prompt is the mean of the three label distributions
    (fit_contextual_calibration) and its prediction p becomes W p / sum(W p) (apply_calibration).
    """
    env = _Env(model, tokenizer, cfg, cache)
    sets = _calibration_sets(env, dataset)
    name = dataset.info.name
    builder, prompts = sets.pop("normal")
    before, probs = env.evaluate(builder, prompts, f"calibration-test {name}")
    cf = np.stack([env.probs(b, p, f"{key} {name}") for key, (b, p) in sets.items()], axis=1)  # (N, 3, C)
    calibrated = np.stack([apply_calibration(probs[j], fit_contextual_calibration(cf[j])) for j in range(len(probs))])
    return {
        "uncalibrated": before,
        "calibrated": prompt_metrics(calibrated, prompts, len(builder.label_words)),
        "content_free_inputs": list(CONTENT_FREE_INPUTS),
        "content_free_distribution": cf.mean(axis=(0, 1)).tolist(),
    }


# ---------------------------------------------------------------------------------------- running
Protocol = Callable[..., dict]
_SETS = {
    "template": _template_sets,
    "demo": _demo_sets,
    "generalization": _generalization_sets,
    "unseen_label": _unseen_sets,
    "bias": _bias_sets,
    "calibration": _calibration_sets,
}
PROTOCOLS: dict[str, Protocol] = {
    "template": template_consistency,
    "demo": demo_consistency,
    "generalization": generalization,
    "unseen_label": unseen_label,
    "bias": bias,
    "calibration": contextual_calibration,
}


def selected(cfg) -> list[str]:
    """metrics.json keys of the protocols `cfg.eval` asks for, in run order."""
    ev = cfg.eval
    test_types = set(ev.test_type)
    flags = {
        "template": "template" in test_types,
        "demo": "demo" in test_types,
        "generalization": ev.generalization_test,
        "unseen_label": ev.unseen_label_test,
        "bias": ev.bias_test,
        "calibration": ev.calibration,
    }
    return [key for key in PROTOCOLS if flags[key]]


def check_suites(model, tokenizer, dataset: Dataset, cfg) -> None:
    """Build every prompt of the selected protocols once, so that a label word that does not tokenise, an
    impossible sampler or a prompt longer than the model's context fails before a run starts (UserError)."""
    keys = selected(cfg)
    if not keys:
        return
    env = _Env(model, tokenizer, cfg)
    limit = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    for key in keys:
        for name, (_, prompts) in _SETS[key](env, dataset).items():
            longest = max((len(p.input_ids) for p in prompts), default=0)
            if limit and longest > limit:
                raise UserError(
                    f"a {key} prompt ({name}) has {longest} tokens, more than the model's context of {limit}; lower --k"
                )


def summary(key: str, result: dict) -> str:
    """One line for the log."""
    if key == "template":
        return (
            f"template consistency {result['consistency']:.4f}  mean accuracy {result['mean_accuracy']:.4f}  "
            f"({result['queries']} queries x 9 templates)"
        )
    if key == "demo":
        return (
            f"demonstration consistency {result['consistency']:.4f}  accuracy {result['accuracy']:.4f}  "
            f"({result['queries']} queries x {result['sets']} sets)"
        )
    if key == "generalization":
        ood = result["out_of_domain_accuracy"]
        return (
            f"in-domain accuracy {result['in_domain_accuracy']:.4f}  out-of-domain "
            f"{'n/a' if ood is None else f'{ood:.4f}'}  ({len(result['datasets'])} datasets)"
        )
    if key == "unseen_label":
        return (
            f"unseen-label accuracy {result['unseen_label']['accuracy']:.4f}  normal "
            f"{result['normal']['accuracy']:.4f}  0-shot {result['zero_shot']['accuracy']:.4f}"
        )
    if key == "bias":
        post = result["posterior_bias"]
        line = (
            f"contextual bias {result['contextual_bias']:.4f}  domain bias {result['domain_bias']:.4f}  "
            f"posterior bias {'inf' if post is None else f'{post:.4f}'}  (max {result['max_entropy']:.4f})"
        )
        if result["label_noise"]:
            line += f"  label-noise accuracy slope {result['label_noise']['slope']['accuracy']:.4f}"
        return line
    if key == "calibration":
        return (
            f"calibrated accuracy {result['calibrated']['accuracy']:.4f}  "
            f"(uncalibrated {result['uncalibrated']['accuracy']:.4f})"
        )
    return key


def run_suites(
    model,
    tokenizer,
    dataset: Dataset,
    cfg,
    *,
    cache: ScoreCache | None = None,
    stage: str = "",
    log=print,
    timings: dict | None = None,
) -> dict:
    """Run the protocols cfg.eval selects; returns {key: result} (keys: template, demo, generalization,
    unseen_label, bias, calibration). Seconds per protocol go to timings[f"{stage}_{key}_seconds"]."""
    cache = ScoreCache() if cache is None else cache
    out = {}
    for key in selected(cfg):
        t = time.perf_counter()
        out[key] = PROTOCOLS[key](model, tokenizer, dataset, cfg, cache=cache)
        if timings is not None:
            timings[f"{stage}_{key}_seconds"] = round(time.perf_counter() - t, 2)
        log(f"{stage:>6}: {summary(key, out[key])}")
    return out


# --------------------------------------------------------------------------------- generalization
def generalization_table(before: dict | None, after: dict | None) -> dict | None:
    """The in-domain vs out-of-domain table from the generalization results of the two stages (either may
    be None when that stage did not run): one row per dataset with accuracy before, after and the gain."""
    ref = before or after
    if ref is None:
        return None

    def acc(stage, name):
        return stage["datasets"][name]["accuracy"] if stage else None

    def gain(b, a):
        return a - b if a is not None and b is not None else None

    rows = []
    for name in ref["datasets"]:
        b, a = acc(before, name), acc(after, name)
        domain = "in" if name == ref["in_domain"] else "out"
        rows.append({"dataset": name, "domain": domain, "before": b, "after": a, "gain": gain(b, a)})
    summary_rows = {}
    for key in ("in_domain_accuracy", "out_of_domain_accuracy"):
        b = before[key] if before else None
        a = after[key] if after else None
        summary_rows[key.removesuffix("_accuracy")] = {"before": b, "after": a, "gain": gain(b, a)}
    return {"in_domain_dataset": ref["in_domain"], "rows": rows, **summary_rows}


def format_generalization_table(table: dict) -> str:
    """The table as aligned text (accuracy in %)."""

    def pct(x):
        return "-" if x is None else f"{100 * x:.2f}"

    def signed(x):
        return "-" if x is None else f"{100 * x:+.2f}"

    width = max(12, *(len(r["dataset"]) for r in table["rows"])) + 2
    lines = [f"{'dataset':<{width}}{'domain':<8}{'before':>8}{'after':>8}{'gain':>8}"]
    for r in table["rows"]:
        lines.append(
            f"{r['dataset']:<{width}}{r['domain']:<8}{pct(r['before']):>8}{pct(r['after']):>8}{signed(r['gain']):>8}"
        )
    for key, label in (("in_domain", "in-domain"), ("out_of_domain", "out-of-domain mean")):
        s = table[key]
        lines.append(f"{label:<{width + 8}}{pct(s['before']):>8}{pct(s['after']):>8}{signed(s['gain']):>8}")
    return "\n".join(lines)
