"""benchmarks/run_all.py (`make bench`): every side-by-side group runs in interleaved rounds; medians and spreads."""

import importlib.util
import json
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "run_all.py"


@pytest.fixture
def run_all(monkeypatch):
    spec = importlib.util.spec_from_file_location("run_all", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_groups_run_interleaved_and_ratios_are_per_round(run_all, monkeypatch):
    calls = []

    def fake(*args, env=None):  # each call a little faster than the one before: a drifting machine
        calls.append(args)
        speed = 1.0 + len(calls) / 100
        ours = "reference" not in args and "staicc" not in args
        return {
            "examples_per_s": speed * (2 if ours else 1),
            "prompts_per_s": speed * (2 if ours else 1),
            "activation_mb": 100.0 if ours else 400.0,
            "matmul_gflops_per_s": 100.0,
            "train_gflops_per_s": 80.0,
            "eval_gflops_per_s": 90.0,
        }

    monkeypatch.setattr(run_all, "workload", fake)
    results = {}
    rows = run_all.measure(quick=True, repeats=3, results=results)
    k4 = [c for c in calls if c[:3] == ("train", "--k", "4") and "--micro" not in c]  # the speed group
    assert [("reference" in c, "e2e" in c) for c in k4] == [
        (True, False), (False, False), (False, True),  # round 1
        (False, True), (False, False), (True, False),  # round 2: reversed
        (True, False), (False, False), (False, True),  # round 3
    ]  # fmt: skip
    k4_speed = results["train_speedup_k4_spread"]
    assert len(k4_speed["rounds"]) == 3 and k4_speed["min"] <= results["train_speedup_k4"] <= k4_speed["max"]
    assert 1.9 < k4_speed["min"] and k4_speed["max"] < 2.1  # the ratio within a round, not across rounds
    assert results["train_memory_ratio_k16"] == 0.25
    assert results["train_peak_fraction"] == pytest.approx(0.8) and results["eval_peak_fraction"] == pytest.approx(0.9)
    assert len(rows) == 9 and json.dumps(results)
