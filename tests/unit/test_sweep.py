"""`abft sweep`: one run per (method, training-set size) on a tiny random Llama, one table, reuse on re-run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import tiny_llama
from tiny_tokenizer import word_tokenizer
from toy_dataset import toy

from abft import runner
from abft.cli import main
from abft.sweep import format_sweep

SMALL = ["--k", "1", "--test-samples", "4", "--eval-batch-size", "4", "--pseudo-batch-size", "2", "--epochs", "1"]
SMALL += ["--lr", "1e-3", "--no-save"]


@pytest.fixture
def tiny(monkeypatch):
    tok = word_tokenizer()
    loads = []

    def load_model(*args, **kwargs):
        loads.append(1)
        return tiny_llama(max_position_embeddings=512), tok  # a fresh base model for every run

    monkeypatch.setattr(runner, "load_model", load_model)
    monkeypatch.setattr(runner, "load_data", lambda spec: toy(n_cal=16))
    monkeypatch.setenv("ABFT_NO_PROGRESS", "1")
    monkeypatch.setattr("abft.report.html.write_report", lambda path: Path(path) / "report.html")  # matplotlib: slow
    return loads


def test_sweep_table_and_reuse(tiny, tmp_path, monkeypatch, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", *SMALL, "--sizes", "2", "4", "--methods", "abft", "e2e", "--output", str(out)]
    assert main(args) == 0
    table = json.loads((out / "sweep.json").read_text())
    assert [(r["method"], r["train_samples"]) for r in table["rows"]] == [
        ("abft", 2),
        ("abft", 4),
        ("e2e", 2),
        ("e2e", 4),
    ]
    first = json.loads((out / "abft-2" / "metrics.json").read_text())
    assert table["before_accuracy"] == first["before"]["accuracy"]
    for r in table["rows"]:
        metrics = json.loads((Path(r["run"]) / "metrics.json").read_text())
        config = json.loads((Path(r["run"]) / "config.json").read_text())
        assert config["train"]["method"] == r["method"] and config["data"]["train_samples"] == r["train_samples"]
        assert r["accuracy"] == metrics["after"]["accuracy"]
        assert r["gain"] == pytest.approx(r["accuracy"] - table["before_accuracy"])
        assert ("before" in metrics) == (r["run"].endswith("abft-2"))  # the base model is tested once
    assert len(tiny) == 4
    printed = capsys.readouterr().out
    assert format_sweep(table) in printed
    # the same command again reuses the finished runs
    monkeypatch.setattr(runner, "run", lambda *a, **k: pytest.fail("a finished run was run again"))
    assert main(args) == 0
    assert json.loads((out / "sweep.json").read_text()) == table


def test_sweep_bad_sizes(tiny, tmp_path, capsys):
    assert main(["sweep", *SMALL, "--sizes", "0", "--output", str(tmp_path / "s")]) == 2
    assert "--sizes" in capsys.readouterr().err
