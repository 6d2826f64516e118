"""report.html polish (issue 16): number format, title, device / dtype, the config once, token-labelled
attention maps with the first token apart, standard errors and the data splits. Hand-made run directories:
no model is loaded, so each test takes a second or two."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from abft.report import figures
from abft.report.html import fmt, write_report
from abft.rundir import RunDir

TOKENS = ["<s>", "review", ":", "fun", "label", ":", " pos", "\n", "review", ":", "dull", "label", ":"]
LABELS = [6]  # " pos": a demonstration label (gold 1, the demonstration says 1)


def _example(n_layers: int = 3) -> dict:
    """example_attention.json whose first token takes 0.9 of the attention in every layer (a BOS sink)."""
    rng = np.random.default_rng(0)
    t = len(TOKENS)

    def side():
        rest = rng.random((n_layers, t - 1))
        rows = np.concatenate([np.full((n_layers, 1), 0.9), 0.1 * rest / rest.sum(1, keepdims=True)], axis=1)
        mean = rows.mean(0).tolist()
        return {"layer_mean": rows.tolist(), "induction_mean": mean, "all_mean": mean, "induction_heads": 2,
                "label_mass_per_layer": [0.1] * n_layers}  # fmt: skip

    prompt = {"tokens": TOKENS, "label_positions": LABELS, "demo_labels": [1], "gold": 1, "text": "..."}
    return {"prompt": prompt, "mean_over_heads": 2, "before": side(), "after": side()}


def _run(tmp_path: Path, config_extra: dict | None = None, **model) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    config = {
        "model": {"model": "tiny", "device": None, "dtype": None, **model},
        "data": {"dataset": "reviews.csv", "k": 2, "test_samples": 16},
        "train": {"method": "abft", "lr": 3e-4, "pid": [0.03, 0.005, 0.005], "penalty": 0.5},
        "command": "run",
        **(config_extra or {}),
    }
    RunDir(run).write_config(config)
    splits = {"dataset": "reviews", "made_by": "seeded", "calibration": 7, "demonstration": 30, "test": 3,
              "test_distinct_queries": 3, "test_queries_in_other_splits": 0, "test_prompts": 16,
              "test_prompt_queries": 3, "prompts_per_query": 5.33}  # fmt: skip
    metrics = {
        "dataset": "reviews",
        "label_words": ["neg", "pos"],
        "before": {"accuracy": 0.625, "accuracy_se": 0.12103, "prompts": 16},
        "after": {"accuracy": 0.75, "accuracy_se": 0.10826, "prompts": 16},
        "data_splits": splits,
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "example_attention.json").write_text(json.dumps(_example()))
    (run / "status.json").write_text(json.dumps({"state": "finished"}))
    return run


def _page(run: Path) -> str:
    return write_report(run).read_text()


def test_small_numbers_keep_their_digits():
    assert fmt(3e-4) == "3e-04" and fmt(2.9726e-4) == "2.973e-04" and fmt(-0.004857) == "-4.857e-03"
    assert fmt(0.005) == "5e-03" and fmt(1.45e-3) == "1.45e-03"
    assert fmt(0.01) == "0.0100" and fmt(0.625) == "0.6250" and fmt(0.0) == "0.0000" and fmt(123456.0) == "1.235e+05"
    assert fmt(float("nan")) == "nan" and fmt(2) == "2" and fmt(True) == "True"


def test_config_once_with_readable_lr_and_a_title_without_the_repeated_word(tmp_path):
    page = _page(_run(tmp_path))
    assert '<td>train.lr</td><td class="num">0.0003</td>' in page  # as config.json has it (was 0.0000)
    assert "<td>train.pid</td><td>0.03 0.005 0.005</td>" in page  # as typed after --pid
    assert '<td>train.penalty</td><td class="num">0.5</td>' in page  # not 0.5000
    assert "<title>abft report: ABFT training on reviews</title>" in page
    assert "<h1>abft report: ABFT training on reviews</h1>" in page and "abft abft" not in page
    assert page.count("train.lr") == 1 and "<pre>" not in page  # the config once, as a table


def test_evaluation_title(tmp_path):
    run = _run(tmp_path, {"command": "evaluate"})
    assert "<h1>abft report: evaluation of reviews</h1>" in _page(run)


@pytest.mark.parametrize(
    "runtime, asked, shown",
    [
        (None, {}, ("auto", "auto")),
        (None, {"device": "cuda:1", "dtype": "bf16"}, ("cuda:1", "bf16")),
        ({"device": "cpu", "dtype": "fp32"}, {}, ("cpu", "fp32")),
        ({"device": "cuda:0", "dtype": "bf16"}, {"device": "cuda"}, ("cuda:0", "bf16")),
        ("garbage", {}, ("auto", "auto")),
    ],
)
def test_device_and_dtype_show_what_ran(tmp_path, runtime, asked, shown):
    extra = {} if runtime is None else {"runtime": runtime}
    page = _page(_run(tmp_path, extra, **asked))
    assert f"<td>device</td><td>{shown[0]}</td>" in page and f"<td>dtype</td><td>{shown[1]}</td>" in page
    assert "<td>None</td>" not in page
    if not asked:
        assert "<td>model.device</td><td>auto</td>" in page and "<td>model.dtype</td><td>auto</td>" in page


def test_accuracy_with_its_standard_error_and_the_data_splits(tmp_path):
    page = _page(_run(tmp_path))
    assert (
        "<td>accuracy before</td><td>0.6250 ± 0.1210 (one standard error, 16 prompts over 3 distinct queries)" in page
    )
    assert "<td>accuracy after</td><td>0.7500 ± 0.1083 (one standard error" in page
    assert '<table id="data">' in page and '<td>test_prompt_queries</td><td class="num">3</td>' in page
    assert "7 calibration / 30 demonstration / 3 test rows" in page
    assert re.search(r'<p class="down">warning: reviews: only 3 distinct test queries[^<]*reuse 3 queries', page)
    assert "<td>data_splits.test</td>" not in page  # shown once, in the data section


def test_accuracy_figure_has_error_bars_where_metrics_have_standard_errors():
    metrics = {"before": {"accuracy": 0.6, "accuracy_se": 0.05, "demo": {"accuracy": 0.5}},
               "after": {"accuracy": 0.8, "accuracy_se": 0.04}}  # fmt: skip
    keys = [key for key, _, _ in figures.score_pairs(metrics)]
    se = figures.standard_errors(metrics, keys)
    assert keys == ["accuracy", "demo.accuracy"]
    assert se["before"][0] == 0.05 and np.isnan(se["before"][1]) and se["after"][0] == 0.04
    assert figures.standard_errors({"before": {"accuracy": 0.6}}, ["accuracy"]) == {}
    without = json.loads(json.dumps(metrics))
    del without["before"]["accuracy_se"], without["after"]["accuracy_se"]
    assert figures.accuracy_figure(metrics) != figures.accuracy_figure(without)


def test_attention_maps_label_tokens_and_draw_the_first_token_apart():
    example = _example()
    fig = figures.example_attention_plot(example, ["neg", "pos"])
    maps = [ax for ax in fig.axes if ax.images]
    assert len(maps) == 2  # before, after
    expected = [figures._text(t) for t in TOKENS[1:]]
    for ax, side in zip(maps, ("before", "after"), strict=True):
        image = ax.images[0]
        shown = np.asarray(image.get_array())
        np.testing.assert_allclose(shown, np.asarray(example[side]["layer_mean"])[:, 1:])  # first token left out
        vmin, vmax = image.get_clim()
        assert vmax < 0.2  # the scale of the other tokens, not the sink's 0.9
        assert [t.get_text() for t in ax.get_xticklabels()] == expected  # the prompt's tokens, in order
        bold = [t.get_text() for t in ax.get_xticklabels() if t.get_fontweight() == "bold"]
        assert bold == [" pos"]
    firsts = [ax for ax in fig.axes if ax.get_title().startswith("first token")]
    assert len(firsts) == 3  # before, after and the curve's first token, each on its own scale
    bars = [p.get_width() for p in firsts[0].patches]
    assert bars == pytest.approx([0.9] * 3)
    png = figures.example_attention_figure(example, ["neg", "pos"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_attention_map_labels_are_thinned_for_long_prompts():
    example = _example()
    t = 500
    tokens = [f"w{i}" for i in range(t)]
    example["prompt"].update(tokens=tokens, label_positions=[250], demo_labels=[0])
    for side in ("before", "after"):
        rows = np.full((3, t), 1.0 / t)
        example[side].update(layer_mean=rows.tolist(), induction_mean=rows[0].tolist(), all_mean=rows[0].tolist())
    fig = figures.example_attention_plot(example)
    labels = [tick.get_text() for tick in next(ax for ax in fig.axes if ax.images).get_xticklabels()]
    assert len(labels) <= figures.MAX_TOKEN_LABELS + 1 and "w250" in labels and "w1" in labels


def test_attention_maps_without_tokens_or_of_the_wrong_shape(tmp_path):
    example = _example()
    del example["prompt"]["tokens"]
    fig = figures.example_attention_plot(example)
    ax = next(ax for ax in fig.axes if ax.images)
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(i) for i in range(1, len(TOKENS))]
    example["after"]["layer_mean"] = [[1.0]]
    with pytest.raises(ValueError, match="layer maps of shapes"):
        figures.example_attention_plot(example)


@pytest.mark.parametrize(
    "splits",
    [{"test": "x", "calibration": [1]}, {"dataset": 5, "prompts_per_query": "many"}, ["not", "a", "dict"], {}],
)
def test_data_splits_of_another_shape_still_render(tmp_path, splits):
    run = _run(tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["data_splits"] = splits
    (run / "metrics.json").write_text(json.dumps(metrics))
    page = _page(run)
    assert "<h1>abft report" in page and ("<h2>Data</h2>" in page) == (isinstance(splits, dict) and bool(splits))


def test_tables_have_no_python_reprs_empty_headers_or_meaningless_changes(tmp_path):
    run = _run(tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["validation"] = {
        "prompts": 8,
        "kept_step": 2,
        "curve": [{"step": 0, "accuracy": 0.5}, {"step": 2, "accuracy": 0.75}],
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "timings.json").write_text(json.dumps({"train_seconds": 1696.98, "before_reused": "abc"}))
    page = _page(run)
    assert '<table id="summary">\n<tbody>' in page and "<th></th><th></th>" not in page  # key: value, no header
    assert "{'step'" not in page and "<th>step</th><th>accuracy</th>" in page  # the curve as a table
    for key in ("accuracy_se", "prompts"):  # the change of a count or a standard error means nothing
        assert re.search(rf"<tr><td>{key}</td>(<td[^>]*>[^<]*</td>){{2}}<td></td></tr>", page)
    assert '<td>accuracy</td><td class="num">0.6250</td><td class="num">0.7500</td><td class="num">0.1250</td>' in page
    assert '<td>train_seconds</td><td class="num">1696.98</td>' in page
