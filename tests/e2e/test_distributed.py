"""Two processes (torchrun, gloo on CPU) against one: the same trained tensors, records and metrics.

One torchrun launch (tests/e2e/dist_worker.py) runs the real `abft run` CLI on a tiny random Llama saved
with the word-level test tokenizer, then train() (E2E through LoRA, PID controller) on synthetic prompts;
the same two things run here in one process. Micro-batches of one prompt, so the two sides differ only in
the order gradients are summed (fp32 rounding), not in padding.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dist_worker import generate_sharded, no_report, train_synthetic
from safetensors.torch import load_file
from tiny_models import tiny_llama

from abft.cli import main

HERE = Path(__file__).parent
FLAGS = ["--dataset", "sst2", "--k", "2", "--train-samples", "12", "--pseudo-batch-size", "8", "--epochs", "1"]
FLAGS += ["--micro-batch-size", "1", "--test-samples", "10", "--eval-batch-size", "4", "--lr", "1e-3"]
FLAGS += ["--no-head-filter", "--wrong-label-penalty", "0.3"]
FLAGS += ["--val-samples", "4", "--keep", "last"]  # validation scored collectively, the trained weights kept


@pytest.fixture(scope="module")
def model_dir(tiny_word_model_dir):
    return tiny_word_model_dir


def launch_two(model_dir, tmp_path_factory, *extra: str) -> dict:
    """Two processes of dist_worker.py: OUT/run (the run directory), OUT/train.pt, stdout, the scratch TMPDIR."""
    out, scratch = tmp_path_factory.mktemp("two"), tmp_path_factory.mktemp("tmpdir")
    env = {**os.environ, "ABFT_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1", "TMPDIR": str(scratch)}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent.parent / "src"), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += [str(HERE / "dist_worker.py"), str(model_dir), str(out), *FLAGS, *extra]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"out": out, "stdout": result.stdout, "scratch": scratch}


@pytest.fixture(scope="module")
def two(model_dir, tmp_path_factory):
    return launch_two(model_dir, tmp_path_factory)


@pytest.fixture(scope="module")
def two_sharded(model_dir, tmp_path_factory):
    return launch_two(model_dir, tmp_path_factory, "--fsdp")


LORA_E2E = ["--method", "e2e", "--lora-r", "4"]  # the big-model recipe: adapters on a sharded base


def test_sharded_lora_adapter_equals_one_process(model_dir, tmp_path_factory):
    two = launch_two(model_dir, tmp_path_factory, "--fsdp", *LORA_E2E)
    one = tmp_path_factory.mktemp("one-lora") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("abft.report.html.write_report", no_report)
        assert main(["run", "--model", str(model_dir), *FLAGS, *LORA_E2E, "--output", str(one)]) == 0
    a = load_file(str(one / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(two["out"] / "run" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and max(float(a[k].abs().max()) for k in a if "lora_B" in k) > 1e-4  # trained
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    _close(
        json.loads((one / "metrics.json").read_text()),
        json.loads((two["out"] / "run" / "metrics.json").read_text()),
        1e-6,
    )


@pytest.fixture(scope="module")
def one(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("abft.report.html.write_report", no_report)
        assert main(["run", "--model", str(model_dir), *FLAGS, "--output", str(out / "run")]) == 0
    return {"out": out, "train": train_synthetic(), "generation": generate_sharded()}


def _close(a, b, tol):
    """Same keys and structure; numbers equal within `tol` (ints and strings exactly)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        return all(_close(a[k], b[k], tol) for k in a)
    if isinstance(a, list):
        assert len(a) == len(b)
        return all(_close(x, y, tol) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        assert abs(a - b) <= tol, (a, b)
        return True
    assert a == b
    return True


@pytest.mark.parametrize("launch", ["two", "two_sharded"])
def test_run_directory_delta_and_metrics_equal_one_process(one, launch, request):
    """Data parallel, and fully sharded (FSDP2: each process holds half of every tensor), equal one process."""
    two = request.getfixturevalue(launch)
    a, b = one["out"] / "run", two["out"] / "run"
    da, db = load_file(str(a / "delta.safetensors")), load_file(str(b / "delta.safetensors"))
    assert da.keys() == db.keys()
    assert max(float((da[k] - db[k]).abs().max()) for k in da) < 1e-5
    base = tiny_llama("sdpa").state_dict()
    moved = max(float((db[k] - base[k.split("@")[0]][: db[k].shape[0]]).abs().max()) for k in db if "q_proj" in k)
    assert moved > 1e-4  # training happened, so equality is not trivial
    _close(json.loads((a / "metrics.json").read_text()), json.loads((b / "metrics.json").read_text()), 1e-6)
    log_a = [json.loads(line) for line in (a / "train_log.jsonl").read_text().splitlines()]
    log_b = [json.loads(line) for line in (b / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_b] == [1, 2]  # one line per step: written by one process only
    for ra, rb in zip(log_a, log_b, strict=True):
        assert ra["examples"] == rb["examples"] == [8, 4][ra["step"] - 1]  # the global pseudo-batch
        for key in ("loss", "heads", "penalty", "grad_norm"):
            assert abs(ra[key] - rb[key]) <= 1e-5 * max(1.0, abs(ra[key])), key


def test_only_the_main_process_writes_and_logs(two):
    run = two["out"] / "run"
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    assert two["stdout"].count("before: accuracy") == 1 and two["stdout"].count("after: accuracy") == 1
    assert not list(two["scratch"].glob("abft-rank*"))  # the other process's scratch run directory is gone


def test_lora_pid_training_equals_one_process(one, two):
    a, b = one["train"], torch.load(two["out"] / "train.pt")
    assert max(float((a["tensors"][k] - b["tensors"][k]).abs().max()) for k in a["tensors"]) < 1e-5
    ra, rb = a["records"], b["records"]
    assert [r["examples"] for r in rb] == [4, 4, 2, 4, 4, 2]
    assert len({r["penalty"] for r in rb}) > 1  # the PID moved A: it saw the global head counts
    for x, y in zip(ra, rb, strict=True):
        for key in ("loss", "heads", "penalty", "grad_norm", "train_accuracy"):
            assert abs(x[key] - y[key]) <= 1e-5 * max(1.0, abs(x[key])), (x["step"], key)


def test_mauve_generation_and_features_shard_to_the_same_results(one, two):
    a, b = one["generation"], torch.load(two["out"] / "train.pt")["generation"]
    assert b["texts"] == a["texts"] and b["counts"] == a["counts"] and any(a["texts"])
    assert b["features"].shape == a["features"].shape == (7, 32)
    assert float((b["features"] - a["features"]).abs().max()) < 1e-5


def test_a_failure_on_the_main_process_stops_the_others_too(two):
    assert torch.load(two["out"] / "train.pt")["on_main_error"].startswith("ZeroDivisionError")
    other = (two["out"] / "other_rank_error.txt").read_text()
    assert other == "RuntimeError: the main process failed: division by zero"


def test_sharded_run_holds_half_of_every_tensor_per_process(two_sharded):
    for r in range(2):
        fields = (two_sharded["out"] / f"shard{r}.txt").read_text().split()
        kind, rows, cols, _, v_change, _, qk_change, _, resumed, _, meta = fields
        assert meta == str(r != 0)  # only the main process read the weights; the others got their shares
        assert (kind, rows, cols) == ("DTensor", "[16,", "32]")  # q_proj is (32, 32): each process holds 16 rows
        # a sharded fused Q|K|V projection (GPT-2's c_attn): V untouched, Q and K trained
        assert float(v_change) == 0.0 and float(qk_change) > 1e-4
        assert float(resumed) == 0.0  # stopped after 2 of 6 steps, resumed from the checkpoint: the same tensors


def test_accelerate_fsdp_config_asks_for_sharding_and_deepspeed_is_refused(monkeypatch):
    from abft import distributed
    from abft.errors import UserError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert distributed.fsdp_requested()
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(UserError, match="DeepSpeed is not supported"):
        distributed.init()
    assert distributed.world_size() == 1  # nothing was started


def test_fsdp_refuses_what_it_cannot_shard(monkeypatch):
    from abft import distributed, runner
    from abft.config import RunConfig
    from abft.errors import UserError

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    for field, value, flag in [
        ("model.quantized", True, "quantized"),
        ("train.restricted_gradient", True, "restricted_gradient"),
        ("eval.mauve_test", True, "mauve_test"),
    ]:
        cfg = RunConfig()
        cfg.model.fsdp = True
        section, name = field.split(".")
        setattr(getattr(cfg, section), name, value)
        with pytest.raises(UserError, match=f"{flag} cannot be combined with fsdp"):  # the library names parameters
            runner._validate(cfg, train=True)
    cfg = RunConfig()
    cfg.model.fsdp = True
    runner._validate(cfg, train=True)  # the default run is fine
