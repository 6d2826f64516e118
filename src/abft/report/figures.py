"""PNG figures (matplotlib, no pyplot state) from the files of a run directory or an analysis.

    figs = run_figures(metrics, heads, example, shift, log)   # [Figure(name, title, caption, png)], those with inputs
    png = heads_figure(heads["before"], heads["after"])

Every figure has a fixed pixel size, SIZES[name] * DPI, independent of the data.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure as MplFigure
from matplotlib.ticker import MaxNLocator

DPI = 100
SIZES = {  # inches
    "heads": (13.0, 11.0),
    "example_attention": (14.0, 12.0),
    "training": (9.0, 8.0),
    "validation": (9.0, 4.0),
    "qk_shift": (10.0, 4.5),
    "accuracy": (10.0, 5.0),
    "label_heads": (13.0, 10.0),
    "prefix_matching": (7.0, 6.0),
    "interpolation": (13.0, 5.5),
}

RUN_FIGURES = frozenset(
    {"accuracy", "heads", "example_attention", "training", "validation", "qk_shift"}
)  # run_figures' names


@dataclass
class Figure:
    name: str
    title: str
    caption: str
    png: bytes


def pixel_size(name: str) -> tuple[int, int]:
    w, h = SIZES[name]
    return round(w * DPI), round(h * DPI)


def _new(name: str) -> MplFigure:
    return MplFigure(figsize=SIZES[name], dpi=DPI, layout="constrained")


def _png(fig: MplFigure) -> bytes:
    buf = BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # missing glyphs of unusual tokens
        fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _text(s: str) -> str:
    """A token with visible whitespace (draw it with parse_math=False: tokens may hold '$')."""
    return s.replace("\n", "\\n").replace("\t", "\\t") or "''"


def _heatmap(fig, ax, data, title: str, cmap: str = "viridis", vmin=None, vmax=None) -> None:
    data = np.asarray(data, dtype=float)
    image = ax.imshow(data, aspect="auto", origin="lower", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.colorbar(image, ax=ax, shrink=0.85)


def _symmetric(*arrays) -> float:
    return max(float(np.abs(np.asarray(a, dtype=float)).max()) for a in arrays) or 1e-9


# ------------------------------------------------------------------------------------------- run figures
def heads_figure(before: dict, after: dict) -> bytes:
    """Rows: mass on correct labels, mass on wrong labels, induction-head rate; columns: before, after, change."""
    rows = [
        ("attention on correct labels", lambda s: np.asarray(s["correct_mass"], dtype=float), "Greens", None),
        ("attention on wrong labels", lambda s: np.asarray(s["wrong_mass"], dtype=float), "Reds", None),
        ("induction-head rate (ABFT filter)", lambda s: np.asarray(s["induction_rate"], dtype=float), "Blues", 1.0),
    ]
    fig = _new("heads")
    axes = fig.subplots(3, 3)
    for r, (label, get, cmap, top) in enumerate(rows):
        a, b = get(before), get(after)
        top = top or max(float(a.max()), float(b.max()), 1e-9)
        _heatmap(fig, axes[r, 0], a, f"{label}: before", cmap, 0, top)
        _heatmap(fig, axes[r, 1], b, f"{label}: after", cmap, 0, top)
        lim = _symmetric(b - a)
        _heatmap(fig, axes[r, 2], b - a, f"{label}: after - before", "RdBu_r", -lim, lim)
    fig.suptitle("Last-token attention on the demonstrations' label tokens, per (layer, head)")
    return _png(fig)


MAX_TOKEN_LABELS = 200  # more tokens than this: every n-th token labelled (and every label token)


def _token_axis(ax, tokens: list[str], positions, prompt: dict, gold: int) -> None:
    """Label the x axis of `ax` (token positions `positions`) with the tokens; label tokens bold and coloured."""
    step = max(1, math.ceil(len(positions) / MAX_TOKEN_LABELS))
    labels = set(prompt.get("label_positions", []))
    shown = [p for i, p in enumerate(positions) if i % step == 0 or p in labels]
    ax.set_xticks(shown)
    size = max(4, min(8, 600 // max(len(shown), 1)))
    ax.set_xticklabels([tokens[p] for p in shown], rotation=90, fontsize=size, parse_math=False)
    demo_labels = dict(zip(prompt.get("label_positions", []), prompt.get("demo_labels", []), strict=False))
    for tick, position in zip(ax.get_xticklabels(), shown, strict=True):
        if position in demo_labels:
            tick.set_fontweight("bold")
            tick.set_color("tab:green" if demo_labels[position] == gold else "tab:red")


def example_attention_figure(example: dict, label_words=None) -> bytes:
    return _png(example_attention_plot(example, label_words))


def example_attention_plot(example: dict, label_words=None) -> MplFigure:
    """Layer x token maps of the last token's attention before/after, and the induction-head mean over tokens.

    The first token (BOS where the tokenizer adds one) is an attention sink that takes most of the attention,
    so it is drawn apart, in narrow panels on the left with their own scale; the maps and the curve show the
    other tokens on one shared scale. The token axis is labelled with the prompt's tokens."""
    prompt = example["prompt"]
    before, after = example["before"], example["after"]
    maps = [np.asarray(side["layer_mean"], dtype=float) for side in (before, after)]  # (L, T) each
    n_tokens = maps[0].shape[1]
    if n_tokens < 2 or maps[1].shape != maps[0].shape:
        raise ValueError(f"example_attention.json: layer maps of shapes {maps[0].shape}, {maps[1].shape}")
    tokens = [_text(str(t)) for t in prompt.get("tokens", [])]
    if len(tokens) != n_tokens:
        tokens = [str(i) for i in range(n_tokens)]
    gold = prompt["gold"]
    union = example.get("mean_over_heads", 0)
    key = "induction_mean" if union else "all_mean"
    curves = [np.asarray(side[key], dtype=float) for side in (before, after)]
    rest = np.arange(1, n_tokens)  # token positions drawn in the main panels
    fig = _new("example_attention")
    grid = fig.add_gridspec(3, 2, width_ratios=[1, 10], height_ratios=[1, 1, 1.1])
    first_top = max(float(m[:, 0].max()) for m in maps)
    top = max(max(float(m[:, 1:].max()) for m in maps), 1e-9)
    layers = np.arange(maps[0].shape[0])
    main = None
    for row, (m, name) in enumerate(zip(maps, ("before", "after"), strict=True)):
        first = fig.add_subplot(grid[row, 0])
        first.barh(layers, m[:, 0], color="tab:gray", height=0.8)
        first.set_xlim(0, max(first_top, 1e-9) * 1.05)  # the first token's own scale
        first.set_ylim(-0.5, len(layers) - 0.5)
        first.set_ylabel("layer")
        first.set_title(f"first token ({tokens[0]})", fontsize=8, parse_math=False)
        first.tick_params(axis="x", labelsize=6)
        first.yaxis.set_major_locator(MaxNLocator(integer=True))
        main = fig.add_subplot(grid[row, 1], sharex=main)
        image = main.imshow(
            m[:, 1:], aspect="auto", origin="lower", cmap="magma", vmin=0, vmax=top, interpolation="nearest",
            extent=(0.5, n_tokens - 0.5, -0.5, len(layers) - 0.5),
        )  # fmt: skip
        main.set_title(f"{name}: mean over heads, per layer (first token left out; its own panel on the left)",
                       fontsize=10)  # fmt: skip
        main.yaxis.set_major_locator(MaxNLocator(integer=True))
        fig.colorbar(image, ax=main, shrink=0.85)
        _token_axis(main, tokens, rest, prompt, gold)
    first = fig.add_subplot(grid[2, 0])
    first.bar([0, 1], [curves[0][0], curves[1][0]], color=["tab:gray", "tab:blue"])
    first.set_xticks([0, 1])
    first.set_xticklabels(["before", "after"], fontsize=7)
    first.set_title("first token", fontsize=8)
    first.tick_params(axis="y", labelsize=6)
    ax = fig.add_subplot(grid[2, 1], sharex=main)
    for position, label in zip(prompt["label_positions"], prompt["demo_labels"], strict=True):
        color = "tab:green" if label == gold else "tab:red"
        ax.axvspan(position - 0.5, position + 0.5, color=color, alpha=0.25, linewidth=0)
    for side, curve, name, color in (
        (before, curves[0], "before", "tab:gray"),
        (after, curves[1], "after", "tab:blue"),
    ):
        label = f"{name} ({side['induction_heads']} heads pass the filter)"
        ax.plot(rest, curve[1:], color=color, marker=".", label=label)
    ax.set_xlim(0.5, max(n_tokens - 0.5, 1.0))
    ax.set_ylabel("attention")
    what = f"the {union} heads passing ABFT's filter before or after" if union else "all heads and layers"
    ax.set_title(f"mean over {what}; label tokens shaded (green: gold label, red: other labels)", fontsize=10)
    _token_axis(ax, tokens, rest, prompt, gold)
    ax.legend(loc="upper left", fontsize=8)
    gold_name = label_words[gold] if label_words and 0 <= gold < len(label_words) else str(gold)
    fig.suptitle(f"Last-token attention over one test prompt (gold label: {_text(gold_name)})", parse_math=False)
    return fig


def training_figure(log: list[dict]) -> bytes:
    """Induction heads per example, the penalty A (and reward B), and the loss per optimiser step."""
    steps = [r["step"] for r in log]
    fig = _new("training")
    axes = fig.subplots(3, 1, sharex=True)
    axes[0].plot(steps, [r["heads"] for r in log], marker="o", color="tab:blue")
    axes[0].set_ylabel("induction heads / example")
    axes[1].plot(steps, [r["penalty"] for r in log], marker="o", color="tab:red", label="A (wrong-label penalty)")
    axes[1].plot(steps, [r["reward"] for r in log], linestyle="--", color="tab:green", label="B (reward)")
    axes[1].set_ylabel("A, B")
    axes[1].legend(fontsize=8)
    axes[2].plot(steps, [r["loss"] for r in log], marker="o", color="black", label="loss")
    if all("train_accuracy" in r for r in log):
        twin = axes[2].twinx()
        twin.plot(steps, [r["train_accuracy"] for r in log], color="tab:purple", alpha=0.6)
        twin.set_ylabel("train accuracy", color="tab:purple")
    axes[2].set_ylabel("loss")
    axes[2].set_xlabel("optimiser step")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle("Training: induction-head count, penalty schedule, loss")
    return _png(fig)


def validation_figure(validation: dict) -> bytes:
    """Validation accuracy (and macro-F1, where recorded) per optimiser step (step 0: the unchanged model), the
    kept step marked on the curve it was chosen by."""
    curve = validation["curve"]
    steps, accuracy = [r["step"] for r in curve], [r["accuracy"] for r in curve]
    f1 = [r.get("macro_f1") for r in curve]
    fig = _new("validation")
    ax = fig.subplots()
    ax.plot(steps, accuracy, marker="o", color="tab:blue", label="validation accuracy")
    if None not in f1:  # runs of an older abft recorded accuracy only
        ax.plot(steps, f1, marker=".", color="tab:green", label="validation macro-F1")
    ax.axhline(accuracy[0], linestyle="--", color="gray", label="unchanged model (step 0)")
    kept = validation.get("kept_step")
    chosen = f1 if validation.get("keep") == "best-f1" and None not in f1 else accuracy
    if kept in steps:
        ax.plot([kept], [chosen[steps.index(kept)]], marker="*", markersize=16, color="tab:red", linestyle="")
        ax.annotate(
            f"kept: step {kept}",
            (kept, chosen[steps.index(kept)]),
            textcoords="offset points",
            xytext=(6, 8),
            color="tab:red",
        )
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("accuracy" if None in f1 else "accuracy / macro-F1")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"Validation during training ({validation['prompts']} prompts from the demonstration split)")
    return _png(fig)


def qk_shift_figure(shift: dict) -> bytes:
    layers = np.asarray(shift["layers"])
    fig = _new("qk_shift")
    ax = fig.subplots()
    width = 0.4
    ax.bar(layers - width / 2, shift["q"], width, label="||ΔW_Q||_F", color="tab:blue")
    ax.bar(layers + width / 2, shift["k"], width, label="||ΔW_K||_F", color="tab:orange")
    ax.set_xlabel("layer")
    ax.set_ylabel("Frobenius norm of the change")
    ax.set_xticks(layers)
    ax.tick_params(axis="x", labelsize=7)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("Per-layer change of the query and key projections (trained - base)")
    return _png(fig)


SCORE_WORDS = ("accuracy", "consistency")
MAX_BARS = 30


def flatten(obj, prefix: str = "") -> dict:
    """Nested dicts -> {"a.b.c": leaf}; lists stay leaves."""
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: obj}


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def before_after(metrics: dict, missing=None) -> list[tuple[str, object, object]]:
    """(metric, before, after) for every entry of metrics.json's before and after (flattened; before's keys
    first), `missing` where a side lacks it."""
    before, after = flatten(metrics.get("before", {})), flatten(metrics.get("after", {}))
    keys = list(before) + [k for k in after if k not in before]
    return [(key, before.get(key, missing), after.get(key, missing)) for key in keys]


def score_pairs(metrics: dict) -> list[tuple[str, float | None, float | None]]:
    """(metric, before, after) for every accuracy / consistency in [0, 1] of every protocol (no slopes, no
    standard errors: those are the bars' error bars)."""
    out = []
    for key, *sides in before_after(metrics):
        last = key.rsplit(".", 1)[-1]
        if not any(word in last for word in SCORE_WORDS) or "slope" in key or last.endswith("_se"):
            continue
        b, a = (v if _number(v) and 0 <= v <= 1 else None for v in sides)
        if b is not None or a is not None:
            out.append((key, b, a))
    return out[:MAX_BARS]


def standard_errors(metrics: dict, keys: list[str]) -> dict[str, list[float]]:
    """{side: [standard error of each key, NaN where metrics.json has none]} for the sides with any: the
    error of `x.accuracy` is `x.accuracy_se`, as evaluation.protocols writes it."""
    out = {}
    for side in ("before", "after"):
        flat = flatten(metrics.get(side, {}))
        se = [flat.get(f"{key}_se") for key in keys]
        se = [v if _number(v) and v >= 0 else np.nan for v in se]
        if not all(np.isnan(se)):
            out[side] = se
    return out


def accuracy_figure(metrics: dict) -> bytes | None:
    pairs = score_pairs(metrics)
    if not pairs:
        return None
    fig = _new("accuracy")
    ax = fig.subplots()
    x = np.arange(len(pairs))
    before = [b if b is not None else np.nan for _, b, _ in pairs]
    after = [a if a is not None else np.nan for _, _, a in pairs]
    sides = [(before, "before", "tab:gray"), (after, "after", "tab:blue")]
    sides = [side for side in sides if not np.isnan(side[0]).all()]
    width = 0.8 / len(sides)
    errors = standard_errors(metrics, [key for key, _, _ in pairs])
    for i, (values, label, color) in enumerate(sides):
        se = errors.get(label)
        bars = ax.bar(
            x + (i - (len(sides) - 1) / 2) * width, values, width, label=label, color=color,
            yerr=se, capsize=3 if se is not None else 0, error_kw={"elinewidth": 1},
        )  # fmt: skip
        ax.bar_label(bars, fmt="%.3f", fontsize=7 if len(pairs) <= 12 else 5, padding=1)
    ax.set_xticks(x)
    rotation = 30 if len(pairs) > 4 else 0
    ax.set_xticklabels([k for k, _, _ in pairs], rotation=rotation, ha="right" if rotation else "center", fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    when = "before and after training" if "after" in metrics else "(no training)"
    ax.set_title(f"{metrics.get('dataset', '')}: accuracy and consistency {when}", parse_math=False)
    return _png(fig)


def read_log(path: Path) -> list[dict]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a crash
    return out


def run_figures(metrics: dict, heads: dict, example: dict | None, shift: dict | None, log: list[dict]) -> list[Figure]:
    """Every figure whose inputs a run directory has, in report order: metrics.json, heads.json,
    example_attention.json, qk_shift.json and train_log.jsonl as read by html.write_report."""
    out: list[Figure] = []
    png = accuracy_figure(metrics)
    if png:
        caption = (
            "Every accuracy and consistency in metrics.json (all protocols); the full list is in the table. "
            "Error bars: one standard error, where metrics.json has one (accuracy_se)."
        )
        out.append(Figure("accuracy", "Accuracy before and after", caption, png))
    if "before" in heads and "after" in heads:
        out.append(
            Figure(
                "heads",
                "Label attention per head",
                "Last-token attention mass on the gold label's and the other labels' demonstration tokens, and "
                "the fraction of prompts on which each head passes ABFT's induction-head filter (heads.json).",
                heads_figure(heads["before"], heads["after"]),
            )
        )
    if example:
        caption = (
            "The first test prompt (example_attention.json), its tokens on the horizontal axes (label tokens bold; "
            "green: the gold label, red: other labels). The first token (BOS where the tokenizer adds one) draws "
            "most of the attention (an attention sink), so it is left out of the maps and the curve and drawn "
            "apart on the left on its own scale; the maps share one colour scale for the other tokens."
        )
        png = example_attention_figure(example, metrics.get("label_words"))
        out.append(Figure("example_attention", "Attention over one prompt", caption, png))
    if log:
        caption = "Per optimiser step from train_log.jsonl: mean induction heads per example, A and B, loss."
        out.append(Figure("training", "Training dynamics", caption, training_figure(log)))
    if metrics.get("validation", {}).get("curve"):
        caption = (
            "Accuracy and macro-F1 on held-out validation prompts (queries and demonstrations from the "
            "demonstration split, never the test split) during training; the star marks the step whose weights "
            "were kept, on the curve that chose it (--keep best: accuracy, best-f1: macro-F1; metrics.json "
            "'validation')."
        )
        out.append(Figure("validation", "Validation curve", caption, validation_figure(metrics["validation"])))
    if shift:
        caption = "Frobenius norm of the change of each layer's W_Q and W_K (qk_shift.json)."
        out.append(Figure("qk_shift", "Weight change per layer", caption, qk_shift_figure(shift)))
    return out


# --------------------------------------------------------------------------------------- analysis figures
def label_heads_figure(result: dict) -> bytes:
    """`abft heads`: label-attention magnitude, correctness and the two filters' rates per (layer, head)."""
    abft, circuit = result["abft_filter"], result["circuit_filter"]
    fig = _new("label_heads")
    axes = fig.subplots(2, 2)
    _heatmap(fig, axes[0, 0], abft["label_mass"], "label-attention magnitude (sum over label tokens)", "viridis", 0)
    correctness = circuit["correctness"]
    lim = _symmetric(correctness)
    _heatmap(fig, axes[0, 1], correctness, "correctness (correct - wrong label mass)", "RdBu_r", -lim, lim)
    thr = f"k/(k + log n_t), min rate {abft['min_rate']}"
    _heatmap(fig, axes[1, 0], abft["induction_rate"], f"ABFT filter rate ({thr})", "Blues", 0, 1)
    loose = f"{circuit['factor']:g}/n_t"
    _heatmap(fig, axes[1, 1], circuit["rate"], f"circuit threshold rate (magnitude > {loose})", "Blues", 0, 1)
    fig.suptitle(f"{result.get('model', '')} on {result.get('dataset', '')}: label-attention heads", parse_math=False)
    return _png(fig)


def prefix_matching_figure(result: dict) -> bytes:
    pm = result["prefix_matching"]
    fig = _new("prefix_matching")
    ax = fig.subplots()
    _heatmap(fig, ax, pm["score"], f"prefix-matching score ({pm['sequences']} x 2 x {pm['length']} tokens)", "Purples")
    ax.set_title(
        f"{result.get('model', '')}: induction score on repeated random tokens\n"
        f"(attention to the token after the first occurrence; heads > {pm['threshold']} listed)",
        fontsize=10,
        parse_math=False,
    )
    return _png(fig)


def interpolation_figure(result: dict) -> bytes:
    coords = np.asarray(result["coords"], dtype=float)
    a_name, b_name = result["runs"]["a"]["label"], result["runs"]["b"]["label"]
    fig = _new("interpolation")
    axes = fig.subplots(1, 2)
    for ax, key, cmap, title in (
        (axes[0], "accuracy", "viridis", "accuracy"),
        (axes[1], "nll", "magma_r", "mean gold-label NLL (label-normalised)"),
    ):
        z = np.asarray(result[key], dtype=float).T  # rows: b, columns: a
        low, high = float(z.min()), float(z.max())
        levels = np.linspace(low, high, 13) if high > low else np.array([low - 1e-6, low + 1e-6])
        contour = ax.contourf(coords, coords, z, levels=levels, cmap=cmap)
        if high > low:
            ax.contour(coords, coords, z, levels=levels, colors="k", linewidths=0.3)
        fig.colorbar(contour, ax=ax)
        mid = (coords[0] + coords[-1]) / 2
        margin = 0.04 * (coords[-1] - coords[0])
        ax.set_xlim(coords[0] - margin, coords[-1] + margin)
        ax.set_ylim(coords[0] - margin, coords[-1] + margin)
        for (x, y), name in (((0, 0), "θ0"), ((1, 0), a_name), ((0, 1), b_name)):
            ax.plot(x, y, "o", color="white", markeredgecolor="black")
            right, up = x <= mid, y <= mid  # write toward the middle of the plot
            ax.annotate(
                name,
                (x, y),
                textcoords="offset points",
                xytext=(6 if right else -6, 6 if up else -14),
                ha="left" if right else "right",
                fontsize=9,
                parse_math=False,
                bbox={"boxstyle": "round", "fc": "white", "alpha": 0.7},
            )
        ax.set_xlabel(f"a  (θ0 + a·Δ {a_name})", parse_math=False)
        ax.set_ylabel(f"b  (+ b·Δ {b_name})", parse_math=False)
        ax.set_title(title, fontsize=10)
    title = f"Linear mode connectivity, {result.get('dataset', '')}, {result.get('prompts', '')} test prompts"
    fig.suptitle(title, parse_math=False)
    return _png(fig)
