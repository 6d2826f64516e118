"""`abft` end to end on the embedded model, with small sizes, in a subprocess like a user runs it."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

SMALL = ["--train-samples", "8", "--pseudo-batch-size", "4", "--epochs", "1", "--test-samples", "16", "--lr", "1e-4"]
SMALL += ["--val-samples", "16"]  # validation on the real model, kept cheap


def abft(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "abft.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**__import__("os").environ, "ABFT_NO_PROGRESS": "1"},
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "small"
    result = abft("run", "--dataset", "sst2", *SMALL, "--output", str(out))
    assert result.returncode == 0, result.stderr
    return out


def test_run_writes_the_run_directory(run_dir):
    names = {p.name for p in run_dir.iterdir()}
    assert {
        "config.json",
        "metrics.json",
        "train_log.jsonl",
        "heads.json",
        "delta.safetensors",
        "status.json",
        "report.html",
        "timings.json",
    } <= names
    assert not [n for n in names if n.endswith(".tmp")]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["before"]["prompts"] == 16 and 0 <= metrics["after"]["accuracy"] <= 1
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all(r["examples"] == 4 for r in log)
    assert json.loads((run_dir / "status.json").read_text())["state"] == "finished"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["train"]["lr"] == 1e-4 and config["data"]["train_samples"] == 8


def test_same_command_same_metrics_and_delta(run_dir, tmp_path):
    again = tmp_path / "again"
    result = abft("run", "--dataset", "sst2", *SMALL, "--output", str(again))
    assert result.returncode == 0, result.stderr
    assert (again / "metrics.json").read_bytes() == (run_dir / "metrics.json").read_bytes()
    assert (again / "delta.safetensors").read_bytes() == (run_dir / "delta.safetensors").read_bytes()


def test_finished_run_is_not_overwritten(run_dir):
    before = (run_dir / "metrics.json").read_bytes()
    result = abft("run", "--dataset", "sst2", *SMALL, "--output", str(run_dir))
    assert result.returncode == 2
    assert "already holds a finished run" in result.stderr and "Traceback" not in result.stderr
    assert (run_dir / "metrics.json").read_bytes() == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--dataset", "nope"], "unknown dataset"),
        (["run", "--model", "no-such-alias"], "unknown model"),
        (["run", "--model", "/missing/model.gguf"], "does not exist"),
        (["run", "--train-samples", "0"], "--train-samples must be at least 1"),
        (["run", "--lr", "-1"], "--lr must be positive"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, args, message):
    out = tmp_path / "out"
    result = abft(*args, "--output", str(out))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0].lower(), lines
    assert not out.exists()


def test_datasets_lists_all_ten():
    result = abft("datasets")
    assert result.returncode == 0
    assert sum(1 for line in result.stdout.splitlines()[1:] if line.strip()) == 10
