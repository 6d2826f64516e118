"""`abft sweep`: one run per (method, training-set size) on a tiny random Llama, one table, reuse on re-run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from abft import runner
from abft.cli import main
from abft.config import RunConfig
from abft.sweep import format_sweep, sweep

SMALL = ["--k", "1", "--test-samples", "4", "--eval-batch-size", "4", "--pseudo-batch-size", "2", "--epochs", "1"]
SMALL += ["--lr", "1e-3", "--no-save"]


@pytest.fixture
def tiny(patch_runner):
    return patch_runner()  # a fresh base model for every run; the list of models loaded


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
        timings = json.loads((Path(r["run"]) / "timings.json").read_text())
        assert metrics["before"] == first["before"]
        assert ("before_reused" in timings) == (r["run"] != str(out / "abft-2"))  # the base model is tested once
    assert len(tiny) == 4
    printed = capsys.readouterr().out
    assert format_sweep(table) in printed
    # the same command again reuses the finished runs
    monkeypatch.setattr(runner, "run", lambda *a, **k: pytest.fail("a finished run was run again"))
    assert main(args) == 0
    assert json.loads((out / "sweep.json").read_text()) == table


def test_every_run_asks_for_the_fore_test_cache_and_a_missing_accuracy_is_no_gain(tmp_path, monkeypatch):
    runs = []

    def fake_run(cfg, train, overwrite, log):  # e.g. a test type without the normal test: no "before" accuracy
        runs.append(cfg)
        return {"before": {}, "after": {"accuracy": 0.5}}

    monkeypatch.setattr(runner, "run", fake_run)
    monkeypatch.chdir(tmp_path)
    cfg = RunConfig()
    cfg.data.dataset = "sst2"
    cfg.eval.fore_test = False  # a sweep's table needs the before accuracy: the flag is not the sweep's
    table = sweep(cfg, sizes=(2, 4), methods=("abft", "e2e"), log=lambda *a: None)
    assert all(c.eval.fore_test and c.eval.reuse_fore_test and c.eval.post_test for c in runs) and len(runs) == 4
    assert table["before_accuracy"] is None and [r["gain"] for r in table["rows"]] == [None] * 4
    root = Path(runs[0].output).parent  # rundir.default_output(dataset, "sweep")
    assert root.parent == Path("runs") and root.name.startswith("sst2-sweep-")
    assert json.loads((root / "sweep.json").read_text()) == table


def test_sweep_bad_options_leave_nothing_behind(tiny, tmp_path, capsys):
    assert main(["sweep", *SMALL, "--sizes", "0", "--output", str(tmp_path / "s")]) == 2
    assert "--sizes" in capsys.readouterr().err
    assert main(["sweep", *SMALL, "--test-samples", "0", "--output", str(tmp_path / "s")]) == 2  # runner's check
    assert "--test-samples must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
