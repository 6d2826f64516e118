"""abft.report: figures, report.html (also in headless Chromium), `abft heads`, `abft interpolate`.

Two tiny runs are made with the real `abft run` on a tiny random Llama saved with a word-level tokenizer
(tests/support/tiny_tokenizer.py), on StaICC's SST-2, so the runner -> report path is exercised end to end.
"""

import base64
import json
import math
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import numpy as np
import pytest
import torch
from fake_prompts import LABEL_TOKENS, fake_prompts
from tiny_models import tiny_llama

from abft.analysis.heads import HeadsOptions, circuit_heads, discover_heads, induction_stripe, prefix_matching_scores
from abft.analysis.interpolation import interpolate_runs
from abft.analysis.snapshot import RunSnapshot, last_row
from abft.attention import capture_last_row, use_last_row_attention
from abft.batching import collate
from abft.cli import main
from abft.config import TrainConfig
from abft.errors import UserError
from abft.models import load_model
from abft.models.arch import find_qk_slices
from abft.models.weights import trained_tensors
from abft.objectives import ABFTObjective
from abft.report import figures
from abft.report.html import write_report
from abft.rundir import RunDir
from abft.train import train

os.environ.setdefault("ABFT_NO_PROGRESS", "1")
CHROMIUM = Path("/usr/bin/chromium")
SMALL = ["--dataset", "sst2", "--k", "2", "--train-samples", "16", "--pseudo-batch-size", "8", "--epochs", "1"]
SMALL += ["--test-samples", "16", "--lr", "1e-2", "--val-samples", "8", "--val-every", "1"]
SMALL += ["--keep", "last"]  # validation drawn in the report; the trained corners stay distinct for interpolation


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


# ------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def model_dir(tiny_word_model_dir):
    return tiny_word_model_dir


@pytest.fixture(scope="module")
def runs(model_dir, tmp_path_factory):
    """An ABFT run (every head trained: --no-head-filter) and an E2E run, by `abft run`."""
    root = tmp_path_factory.mktemp("runs")
    common = ["run", "--model", str(model_dir), *SMALL]
    assert main([*common, "--no-head-filter", "--output", str(root / "abft")]) == 0
    with pytest.MonkeyPatch.context() as mp:  # one rendered report is enough; E2E only feeds interpolation
        mp.setattr("abft.report.html.write_report", lambda path: Path(path) / "report.html")
        assert main([*common, "--method", "e2e", "--output", str(root / "e2e")]) == 0
    return {"abft": root / "abft", "e2e": root / "e2e"}


# -------------------------------------------------------------------------------- run -> report, figures
def test_run_writes_report_with_every_figure_and_table(runs):
    run = runs["abft"]
    names = {p.stem: p for p in (run / "figures").glob("*.png")}
    assert set(names) == figures.RUN_FIGURES
    page = (run / "report.html").read_text()
    for name, path in names.items():
        data = path.read_bytes()
        assert png_size(data) == figures.pixel_size(name) and len(data) > 5000
        assert f'id="fig-{name}"' in page
        assert base64.b64encode(data).decode() in page  # the very figure, embedded
    assert "http://" not in page and "https://" not in page and "<link" not in page  # self-contained
    for table_id in ("summary", "metrics", "metrics-other", "heads", "timings", "config"):
        assert f'<table id="{table_id}">' in page
    metrics = json.loads((run / "metrics.json").read_text())
    for key in figures.flatten(metrics["before"]):
        assert f"<td>{key}</td>" in page
    assert f'<td class="num">{metrics["after"]["accuracy"]:.4f}</td>' in page
    assert "<td>train.head_filter</td><td>False</td>" in page  # the config table


def test_qk_shift_of_the_run_matches_delta_and_base(runs, model_dir):
    """qk_shift.json (base copied before training) equals ||delta.safetensors - base weights|| per layer."""
    from safetensors.torch import load_file

    base, _ = load_model(str(model_dir))
    slices = find_qk_slices(base)
    base_tensors = trained_tensors(base, slices)
    delta = load_file(str(runs["abft"] / "delta.safetensors"))
    shift = json.loads((runs["abft"] / "qk_shift.json").read_text())
    for s in slices:
        key = f"{s.param}@{s.kind}"
        expected = float((delta[key].double() - base_tensors[key].double()).norm())
        assert shift[s.kind][s.layer] == pytest.approx(expected, rel=1e-6)
    assert min(shift["q"] + shift["k"]) > 0  # every layer trained (no head filter)


def test_report_with_model_recomputes_the_same_snapshot(runs):
    run = runs["abft"]
    written = json.loads((run / "example_attention.json").read_text())
    (run / "example_attention.json").unlink()
    assert main(["report", str(run), "--with-model"]) == 0
    again = json.loads((run / "example_attention.json").read_text())
    assert again["prompt"] == written["prompt"]
    for side in ("before", "after"):
        for key in ("layer_mean", "induction_mean", "all_mean", "label_mass_per_layer"):
            np.testing.assert_allclose(again[side][key], written[side][key], atol=1e-5)
    assert not np.allclose(written["before"]["layer_mean"], written["after"]["layer_mean"], atol=1e-4)
    assert written["prompt"]["tokens"][written["prompt"]["label_positions"][0]] in ("negative", "positive")


def test_report_errors_and_stale_figures(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    bare = tmp_path / "eval"
    bare.mkdir()
    RunDir(bare).write_config({"command": "evaluate", "data": {"dataset": "sst2"}})  # fingerprinted
    (bare / "metrics.json").write_text(json.dumps({"dataset": "sst2", "before": {"accuracy": 0.5}}))
    (bare / "figures").mkdir()
    (bare / "figures" / "qk_shift.png").write_bytes(b"old")
    assert main(["report", str(bare), "--with-model"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("abft: error:") and "no trained weights" in err[-1]
    write_report(bare)
    assert sorted(p.name for p in (bare / "figures").iterdir()) == ["accuracy.png"]  # stale one removed
    assert "fig-qk_shift" not in (bare / "report.html").read_text()


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (Debian package chromium)")
def test_report_renders_in_headless_chromium(runs, tmp_path):
    page = runs["abft"] / "report.html"
    result = subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    dom = result.stdout
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'data-loaded="1"' in dom  # the page's load handler ran
    rendered = sorted(part.split('"')[0] for part in dom.split('data-rendered="')[1:])
    expected = sorted("{}x{}".format(*figures.pixel_size(name)) for name in figures.RUN_FIGURES)
    assert rendered == expected  # every image decoded at its size
    for table_id in ("summary", "metrics", "heads", "timings", "config"):
        assert f'<table id="{table_id}">' in dom


# ------------------------------------------------------------------------------------------- snapshot
def test_snapshot_norms_and_example_attention(tmp_path):
    model = tiny_llama(attn_implementation="sdpa")
    prompt = fake_prompts(1, k=3)[0]
    snap = RunSnapshot(model, prompt, pad_id=0)
    params = dict(model.named_parameters())
    with torch.no_grad():  # in place, as the optimiser does: the snapshot must have copied the base
        params["model.layers.1.self_attn.q_proj.weight"].add_(0.1)
        params["model.layers.0.self_attn.k_proj.weight"][:4].sub_(0.2)
    snap.write(model, tmp_path)
    shift = json.loads((tmp_path / "qk_shift.json").read_text())
    example = json.loads((tmp_path / "example_attention.json").read_text())
    q_numel = params["model.layers.1.self_attn.q_proj.weight"].numel()
    k_cols = params["model.layers.0.self_attn.k_proj.weight"].shape[1]
    assert shift["layers"] == [0, 1]
    assert shift["q"] == pytest.approx([0.0, 0.1 * math.sqrt(q_numel)], rel=1e-5)
    assert shift["k"] == pytest.approx([0.2 * math.sqrt(4 * k_cols), 0.0], rel=1e-5)
    before = np.array(example["before"]["layer_mean"])
    assert before.shape == (2, len(prompt.input_ids)) and np.allclose(before.sum(-1), 1, atol=1e-5)
    assert np.array(example["before"]["all_mean"]).sum() == pytest.approx(1, abs=1e-5)
    assert example["prompt"]["tokens"] == [str(i) for i in prompt.input_ids]
    assert example["prompt"]["label_positions"] == prompt.label_positions
    assert not np.allclose(before, example["after"]["layer_mean"], atol=1e-4)
    fresh = last_row(model, prompt, 0, ABFTObjective())[0].mean(1)  # (L, T) with the trained weights
    np.testing.assert_allclose(fresh.numpy(), example["after"]["layer_mean"], atol=1e-6)


# --------------------------------------------------------------------------------------------- heads
def test_heads_agree_with_the_training_filter():
    """abft heads' ABFT view equals ABFTObjective.induction_heads per prompt and the count training logs."""
    prompts = fake_prompts(12, k=1, seed=1)  # k=1: a low threshold, so some random heads pass
    model = tiny_llama(attn_implementation="sdpa")
    objective = ABFTObjective()
    opts = HeadsOptions(min_rate=0.1, induction_length=8, induction_sequences=2)
    result = discover_heads(model, prompts, 0, 2, opts)
    use_last_row_attention(model)
    per_prompt, correct = [], []
    for p in prompts:
        batch = collate([p], 0)
        with torch.no_grad(), capture_last_row(model) as cap:
            model.model(**batch.model_inputs())
        label_probs = objective.label_attention(cap.probs, batch.label_positions)
        per_prompt.append(objective.induction_heads(label_probs, batch.demo_labels >= 0, batch.lengths)[0].float())
        correct.append(
            label_probs[0, :, :, 0] if p.demo_labels[0] == p.gold else torch.zeros_like(label_probs[0, :, :, 0])
        )
    rate = torch.stack(per_prompt).mean(0).numpy()
    abft = result["abft_filter"]
    np.testing.assert_allclose(abft["correct_mass"], torch.stack(correct).mean(0).numpy(), atol=1e-6)  # k=1
    np.testing.assert_allclose(abft["induction_rate"], rate, atol=1e-6)  # heads.json keeps 6 decimals
    assert rate.sum() > 0, "the tiny model should have some heads passing the filter"
    listed = {str(layer): [h for h in range(rate.shape[1]) if rate[layer, h] >= 0.1] for layer in range(2)}
    assert result["induction_heads"] == {k: v for k, v in listed.items() if v} == abft["induction_heads"]
    cfg = TrainConfig(lr=1e-12, pseudo_batch_size=12, epochs=1)  # one step over all prompts, weights ~unchanged
    records = train(tiny_llama(attn_implementation="sdpa"), prompts, cfg, pad_id=0, label_token_ids=LABEL_TOKENS)
    assert abft["mean_heads_per_prompt"] == pytest.approx(records[0].heads, abs=1e-6)


def test_circuit_threshold_by_hand():
    # label attention of two heads on 3 demonstration labels (gold first): [0.30, 0.05, 0.01], [0.01, 0.01, 0.01]
    magnitude = torch.tensor([0.36, 0.03]).view(1, 1, 2)  # label mass
    correctness = torch.tensor([0.30 - 0.06, 0.01 - 0.02]).view(1, 1, 2)  # gold minus other labels' mass
    mag_pass, correct_pass = circuit_heads(magnitude, correctness, torch.tensor([50]), 2, 5.0)
    # threshold 5/50 = 0.1 for the magnitude, 0.1 / 2 classes = 0.05 for the correctness
    assert mag_pass[0, 0].tolist() == [True, False] and correct_pass[0, 0].tolist() == [True, False]


def test_prefix_matching_stripe_and_tiny_model():
    b, layers, heads, p, n = 2, 1, 3, 1, 5
    t = p + 2 * n
    att = torch.rand(b, layers, heads, t, t)
    loop = torch.zeros(layers, heads)
    for j in range(n):  # R2[j] at p + n + j attends to R1[j + 1] at p + j + 1
        loop += att[:, :, :, p + n + j, p + j + 1].mean(0)
    np.testing.assert_allclose(induction_stripe(att, p, n).numpy(), (loop / n).numpy(), rtol=1e-6)
    perfect = torch.zeros(1, 1, 1, t, t)
    for j in range(n):
        perfect[0, 0, 0, p + n + j, p + j + 1] = 1.0
    assert float(induction_stripe(perfect, p, n)) == 1.0

    model = tiny_llama(attn_implementation="sdpa")
    score = prefix_matching_scores(model, length=10, sequences=3, seed=1, prefix=[1], exclude=[0, 2])
    assert score.shape == (2, 4) and (score >= 0).all() and (score <= 1).all()
    assert model.config._attn_implementation == "sdpa"  # restored
    np.testing.assert_array_equal(score, prefix_matching_scores(model, 10, 3, 1, [1], [0, 2]))


def test_heads_command_reproduces_the_runs_heads(runs, model_dir, tmp_path):
    """`abft heads` on a run's 16 calibration prompts (same seed) = heads.json 'before' of that run."""
    out = tmp_path / "heads"
    args = ["heads", "--model", str(model_dir), "--dataset", "sst2", "--k", "2", "--samples", "16"]
    assert main([*args, "--induction-length", "8", "--output", str(out)]) == 0
    result = json.loads((out / "heads.json").read_text())
    before = json.loads((runs["e2e"] / "heads.json").read_text())["before"]  # its objective has the filter on
    for key in ("label_mass", "correct_mass", "wrong_mass", "induction_rate"):
        np.testing.assert_allclose(result["abft_filter"][key], before[key], atol=1e-6)
    assert result["abft_filter"]["induction_heads"] == before["induction_heads"]
    for name in ("label_heads", "prefix_matching"):
        assert png_size((out / f"{name}.png").read_bytes()) == figures.pixel_size(name)
    assert main([*args, "--output", str(out)]) == 2  # heads.json exists


# --------------------------------------------------------------------------------------- interpolate
def test_interpolation_corners_reproduce_base_and_runs(runs, tmp_path):
    out = tmp_path / "lmc"
    assert (
        main(
            ["interpolate", str(runs["e2e"]), str(runs["abft"]), "--grid", "3", "--test-samples", "16"]
            + [
                "--output",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads((out / "interpolation.json").read_text())
    e2e = json.loads((runs["e2e"] / "metrics.json").read_text())
    abft = json.loads((runs["abft"] / "metrics.json").read_text())
    acc = result["accuracy"]
    assert result["coords"] == [0.0, 0.5, 1.0]
    assert acc[0][0] == e2e["before"]["accuracy"] == abft["before"]["accuracy"]
    assert acc[2][0] == e2e["after"]["accuracy"]
    assert acc[0][2] == abft["after"]["accuracy"]
    likelihood = result["true_label_likelihood"]  # continuous: a sharper check than accuracy
    assert likelihood[0][0] == pytest.approx(abft["before"]["true_label_likelihood"], abs=1e-12)
    assert likelihood[2][0] == pytest.approx(e2e["after"]["true_label_likelihood"], abs=1e-12)
    assert likelihood[0][2] == pytest.approx(abft["after"]["true_label_likelihood"], abs=1e-12)
    assert len({likelihood[0][0], likelihood[2][0], likelihood[0][2]}) == 3  # the three corners differ
    assert len({round(x, 9) for row in result["nll"] for x in row}) > 3
    assert png_size((out / "interpolation.png").read_bytes()) == figures.pixel_size("interpolation")


def test_interpolation_refuses_runs_of_different_setups(runs, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(runs["abft"], other)
    config = json.loads((other / "config.json").read_text())
    config["data"]["k"] = 3
    RunDir(other).write_config(config)  # a run of its own (fingerprinted), not an edited one

    def never(*args):
        raise AssertionError("the model must not be loaded")

    with pytest.raises(UserError, match="differ in k "):
        interpolate_runs(runs["e2e"], other, loader=never)
    config["data"]["k"] = 2
    RunDir(other).write_config(config)
    (other / "delta.safetensors").unlink()
    with pytest.raises(UserError, match="no trained weights"):
        interpolate_runs(runs["e2e"], other, loader=never)
    with pytest.raises(UserError, match="grid must be at least 2"):
        interpolate_runs(runs["e2e"], runs["abft"], grid=1, loader=never)


def test_accuracy_figure_takes_every_protocols_accuracy_but_no_slopes():
    metrics = {
        "dataset": "sst2",
        "before": {"accuracy": 0.5, "macro_f1": 0.4, "template": {"consistency": 0.9, "per_template": [0.5, 0.6]}},
        "after": {"accuracy": 0.75, "bias": {"label_noise": {"slope": {"accuracy": -0.2}}}, "demo": {"accuracy": 1.0}},
    }
    assert figures.score_pairs(metrics) == [
        ("accuracy", 0.5, 0.75),
        ("template.consistency", 0.9, None),
        ("demo.accuracy", None, 1.0),
    ]
    assert png_size(figures.accuracy_figure(metrics)) == figures.pixel_size("accuracy")
    assert figures.accuracy_figure({"before": {"ece": 0.1}}) is None


def test_interpolation_reads_a_lora_run_as_merged_weights(tmp_path):
    from abft.analysis.interpolation import run_weights
    from abft.models.lora import add_lora
    from abft.models.weights import save_trained

    trained = add_lora(tiny_llama(attn_implementation="sdpa"), r=2)
    with torch.no_grad():
        for name, param in trained.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.1)
    effective = trained_tensors(trained, find_qk_slices(trained))  # base + B A, keyed by the wrapped names
    expected = {k.replace(".base_layer", ""): v for k, v in effective.items()}
    save_trained(trained, tmp_path)
    base = tiny_llama(attn_implementation="sdpa")
    before = {k: v.clone() for k, v in trained_tensors(base, find_qk_slices(base)).items()}
    theta = run_weights(base, tmp_path)
    assert set(theta) == set(expected)
    for key in expected:
        torch.testing.assert_close(theta[key], expected[key], atol=1e-6, rtol=0)
    after = trained_tensors(base, find_qk_slices(base))
    assert all(torch.equal(after[k], before[k]) for k in before)  # the base is given back unchanged
    assert any(not torch.equal(theta[k], before[k]) for k in before)
