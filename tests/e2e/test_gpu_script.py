"""benchmarks/gpu.py --tiny: every section of the GPU benchmark runs its code on CPU, so the script cannot rot."""

import json
import os
import subprocess
import sys
from pathlib import Path

import tiny_tokenizer

REPO = Path(__file__).resolve().parents[2]


def test_gpu_benchmark_runs_every_section_on_cpu(tmp_path):
    tiny_tokenizer.word_tokenizer().save_pretrained(tmp_path / "tokenizer")
    out = tmp_path / "gpu.json"
    command = [
        sys.executable,
        str(REPO / "benchmarks" / "gpu.py"),
        "--tiny",
        "--tokenizer",
        str(tmp_path / "tokenizer"),
    ]
    (tmp_path / "device-out").mkdir()  # $OUT of the device tool: a copy of the JSON goes there
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OUT": str(tmp_path / "device-out")}
    done = subprocess.run([*command, "--output", str(out)], capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    sections = results["sections"]
    assert all(s["status"] == "ok" for s in sections.values()), {n: s.get("stderr_tail") for n, s in sections.items()}
    tests = sections["tests"]
    assert tests["tests"] > 50 and tests["failures"] == tests["errors"] == 0  # collected; skipped without CUDA
    for name in ("steps-8b", "steps-1b"):
        rows = sections[name]["rows"]
        assert {(r["impl"], r["method"], r["k"]) for r in rows} == {
            (impl, method, k)
            for impl, method in (("ours", "abft"), ("reference", "abft"), ("ours", "e2e"))
            for k in (4, 16)
        }
        assert all(r["status"] == "ok" and r["examples_per_s"] > 0 for r in rows), rows
        assert all(0 < r["peak_fraction"] for r in rows if r["impl"] == "ours")
    assert sections["scoring"]["rows"][0]["prompts_per_s"] > 0
    protocol = sections["protocol"]["rows"][0]
    assert protocol["seconds_after_loading"] > 0 and protocol["checkpoint_write_s"]
    assert sections["quantized"]["skipped"] == "no CUDA GPU"
    assert [t["met"] for t in results["targets"]].count(None) <= 1  # memory needs a GPU
    assert (tmp_path / "device-out" / out.name).exists() and "targets (8B shape)" in done.stdout
