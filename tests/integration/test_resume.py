"""A run killed with SIGKILL at any moment resumes to exactly the result of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow

ARGS = [
    "--dataset",
    "sst2",
    "--train-samples",
    "48",
    "--pseudo-batch-size",
    "8",
    "--micro-batch-size",
    "4",
    "--epochs",
    "2",
    "--test-samples",
    "16",
    "--lr",
    "1e-3",
]
ENV = {**os.environ, "ABFT_NO_PROGRESS": "1"}


def cli(*args):
    return [sys.executable, "-m", "abft.cli", *args]


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    done = subprocess.run(
        cli("run", "--model", str(tiny_model_dir), *ARGS, "--output", str(out)), env=ENV, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return out


def _steps(run_dir):
    try:
        return len((run_dir / "train_log.jsonl").read_text().splitlines())
    except OSError:
        return 0


@pytest.mark.parametrize("kill_after_steps", [1, 4, 9])
def test_sigkill_then_resume_matches_uninterrupted(tiny_model_dir, reference, tmp_path, kill_after_steps):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        cli("run", "--model", str(tiny_model_dir), *ARGS, "--output", str(out)),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while _steps(out) < kill_after_steps and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((out / "status.json").read_text())["state"] == "running"
    done = subprocess.run(cli("run", "--resume", str(out)), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (out / "delta.safetensors").read_bytes() == (reference / "delta.safetensors").read_bytes()
    assert (out / "metrics.json").read_bytes() == (reference / "metrics.json").read_bytes()
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 13))
    assert not (out / "checkpoint").exists()


def test_resume_of_a_finished_run_is_refused(reference):
    done = subprocess.run(cli("run", "--resume", str(reference)), env=ENV, capture_output=True, text=True)
    assert done.returncode == 2 and "already finished" in done.stderr
