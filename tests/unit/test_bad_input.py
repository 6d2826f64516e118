"""Every mistake a user can make: one line `abft: error: ...`, exit status 2, no traceback, no partial output.

In-process `abft.cli.main` on a tiny random Llama saved as a local model directory (word-level tokenizer,
context 128) and small CSV datasets, so each case takes well under a second (the training ones ~2 s).
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import struct
import time
from pathlib import Path

import pytest
import torch
from objective_patches import nan_from_step_2, patch_loss
from safetensors.torch import save_file
from tiny_models import tiny_gpt2, tiny_llama
from toy_dataset import SMALL, toy_csv

from abft.checkpoint import load_checkpoint, save_checkpoint
from abft.cli import main
from abft.config import RunConfig
from abft.errors import UserError
from abft.models.arch import find_qk_slices
from abft.models.weights import save_delta
from abft.rundir import RunDir


# ------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tiny_tokenizer = pytest.importorskip("tiny_tokenizer")
    path = tmp_path_factory.mktemp("tiny-model")
    tiny_llama(attn_implementation="sdpa").save_pretrained(path)  # max_position_embeddings 128
    tiny_tokenizer.word_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("ABFT_CACHE", str(tmp_path / "cache"))  # GGUF conversions: nothing outside tmp_path
    monkeypatch.setenv("ABFT_NO_PROGRESS", "1")


def _fails(capsys, argv: list[str], message: str) -> str:
    """Run the CLI; assert exit status 2 and exactly one stderr line naming `message`; return that line."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("abft: error: "), err
    assert message in lines[0], lines[0]
    assert "Traceback" not in err
    return lines[0]


def _leaves_nothing(out: Path, cache: Path | None = None) -> None:
    assert not out.exists(), sorted(p.name for p in out.iterdir())
    if cache is not None:  # a failed GGUF conversion leaves nothing in $ABFT_CACHE either
        assert not [p for p in cache.rglob("*") if p.is_file()]


# ------------------------------------------------------------------------------------------------ model
def test_unknown_model_alias(capsys, tmp_path):
    _fails(capsys, ["run", "--model", "no-such-alias", "--output", str(tmp_path / "out")], "unknown model 'no-such")
    _leaves_nothing(tmp_path / "out")


def test_hub_id_not_cached_and_offline_fails_fast(capsys, tmp_path, data_csv, monkeypatch):
    """HF_HUB_OFFLINE (or no network): the cache only, so a clean error in seconds, not minutes of retries."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    argv = ["run", "--model", "abft-tests/no-such-model", "--dataset", str(data_csv), "--output", str(tmp_path / "o")]
    _fails(capsys, argv, "is not in the Hugging Face cache and the hub cannot be reached")
    assert time.perf_counter() - start < 15
    _leaves_nothing(tmp_path / "o")


def test_hub_unreachable_without_offline_flag_uses_the_cache_only(monkeypatch):
    from abft.models import loading

    calls = []
    monkeypatch.setattr(loading, "_hub_reachable", lambda: calls.append(1) or False)
    with pytest.raises(UserError, match="not in the Hugging Face cache"):
        loading.load_model("abft-tests/no-such-model", device="cpu")
    assert calls == [1]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.gguf", None, "does not exist"),
        ("garbage.gguf", os.urandom(2048), "cannot read GGUF file"),
        ("empty.gguf", b"", "cannot read GGUF file"),
        ("truncated.gguf", b"GGUF" + struct.pack("<I", 3), "cannot read GGUF file"),
        ("bad-version.gguf", b"GGUF" + struct.pack("<IQQ", 77, 1, 1), "cannot read GGUF file"),
    ],
)
def test_missing_or_corrupt_gguf(capsys, tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    line = _fails(capsys, ["run", "--model", str(path), "--output", str(tmp_path / "out")], message)
    assert content is None or "download it again" in line
    _leaves_nothing(tmp_path / "out", tmp_path / "cache")


@pytest.mark.parametrize(
    "damage, message",
    [
        ("no config", "is not a model directory (no config.json"),
        ("broken config", "(OSError: It looks like the config file"),
        ("garbage weights", "(SafetensorError:"),
        ("no weights", "no file named model.safetensors"),
        ("no tokenizer", "cannot load model"),
    ],
)
def test_broken_model_directory(capsys, tmp_path, model_dir, data_csv, damage, message):
    broken = tmp_path / "model"
    broken.mkdir()
    for f in model_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    if damage == "no config":
        (broken / "config.json").unlink()
    elif damage == "broken config":
        (broken / "config.json").write_text('{"model_type": "llama", ')
    elif damage == "garbage weights":
        (broken / "model.safetensors").write_bytes(b"\xff" * 64)
    elif damage == "no weights":
        (broken / "model.safetensors").unlink()
    else:
        for f in broken.glob("tokenizer*"):
            f.unlink()
    argv = ["run", "--model", str(broken), "--dataset", str(data_csv), "--output", str(tmp_path / "out")]
    line = _fails(capsys, argv, message)
    assert damage == "no config" or "check that it is a complete model directory" in line
    _leaves_nothing(tmp_path / "out")


# -------------------------------------------------------------------------------------------------- data
@pytest.mark.parametrize("dataset", ["imdb", "12", "-1"])
def test_unknown_dataset_name_or_index(capsys, tmp_path, model_dir, dataset):
    argv = ["run", "--model", str(model_dir), "--dataset", dataset, "--output", str(tmp_path / "out")]
    _fails(capsys, argv, f"unknown dataset '{dataset}'; choose one of sst2")
    _leaves_nothing(tmp_path / "out")


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.csv", None, "cannot read"),
        ("column.csv", b"sentence,label\nw1,negative\n", "has no column 'text' (columns: ['sentence', 'label'])"),
        ("column.jsonl", b'{"text": "w1", "y": "negative"}\n', "row 1 has no value for 'label'"),
        ("empty.csv", b"", "has no data rows"),
        ("header-only.csv", b"text,label\n", "has no data rows"),
        ("empty.jsonl", b"\n\n", "has no data rows"),
        ("latin1.csv", "text,label\ncaf\u00e9,negative\n".encode("latin-1"), "is not UTF-8 text"),
        ("utf16.jsonl", '{"text": "a", "label": "b"}\n'.encode("utf-16"), "is not UTF-8 text"),
        ("broken.jsonl", b'{"text": "w1", "label": "negative"}\n{"text": "w2", \n', "line 2 is not valid JSON"),
        ("indices.csv", b"text,label\nw1,0\nw2,1\nw3,1\n", "labels look like indices"),
    ],
)
def test_malformed_user_dataset(capsys, tmp_path, model_dir, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    argv = ["run", "--model", str(model_dir), "--dataset", str(path), "--output", str(tmp_path / "out")]
    _fails(capsys, argv, message)
    _leaves_nothing(tmp_path / "out")


def test_label_not_in_the_label_list(capsys, tmp_path, model_dir):
    (tmp_path / "d.csv").write_text(toy_csv(30, ("negative", "positive", "neutral")))
    spec = tmp_path / "spec.yaml"
    spec.write_text("path: d.csv\nlabel_words: [negative, positive]\n")
    argv = ["run", "--model", str(model_dir), "--dataset", str(spec), "--output", str(tmp_path / "out")]
    _fails(capsys, argv, "row 3: label 'neutral' is not one of the label words ['negative', 'positive']")
    _leaves_nothing(tmp_path / "out")


def test_label_word_that_is_not_one_token(capsys, tmp_path, model_dir):
    (tmp_path / "d.csv").write_text(toy_csv(30, ("neg-ative", "positive")))
    argv = ["run", "--model", str(model_dir), "--dataset", str(tmp_path / "d.csv"), "--output", str(tmp_path / "out")]
    _fails(capsys, argv, "label word 'neg-ative' is 3 tokens for this tokenizer; pick single-token label words")
    _leaves_nothing(tmp_path / "out")


@pytest.mark.parametrize("command", ["run", "evaluate"])
def test_k_larger_than_the_demonstration_pool(capsys, tmp_path, model_dir, data_csv, command):
    argv = [command, "--model", str(model_dir), "--dataset", str(data_csv), "--k", "300", "--output", str(tmp_path)]
    _fails(capsys, argv, "--k 300 is larger than the demonstration pool of 'reviews' (292 rows); lower --k")
    assert not list(tmp_path.iterdir())


def test_k_larger_than_the_training_pool(capsys, tmp_path, model_dir, data_csv):
    argv = ["run", "--model", str(model_dir), "--dataset", str(data_csv), "--k", "100", "--test-samples", "2"]
    _fails(capsys, [*argv, "--output", str(tmp_path / "out")], "calibration split of 'reviews' has 72 rows; k=100")
    _leaves_nothing(tmp_path / "out")


@pytest.mark.parametrize("command", ["run", "evaluate"])
def test_prompt_longer_than_the_context(capsys, tmp_path, model_dir, data_csv, command):
    argv = [command, "--model", str(model_dir), "--dataset", str(data_csv), "--k", "40", "--test-samples", "4"]
    _fails(capsys, [*argv, "--output", str(tmp_path / "out")], "more than the model's context of 128; lower --k")
    _leaves_nothing(tmp_path / "out")


# ----------------------------------------------------------------------------------------------- numbers
@pytest.mark.parametrize(
    "flags, message",
    [
        (["--k", "-1"], "--k must be at least 0, got -1"),
        (["--test-samples", "0"], "--test-samples must be at least 1"),
        (["--train-samples", "0"], "--train-samples must be at least 1"),
        (["--train-samples", "-5"], "--train-samples must be at least 1"),
        (["--pseudo-batch-size", "0"], "--pseudo-batch-size must be at least 1"),
        (["--micro-batch-size", "0"], "--micro-batch-size must be at least 1"),
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--eval-batch-size", "0"], "--eval-batch-size must be at least 1"),
        (["--checkpoint-every", "0"], "--checkpoint-every must be at least 1"),
        (["--lr", "0"], "--lr must be positive"),
        (["--lr=-1e-4"], "--lr must be positive"),
        (["--lr", "nan"], "--lr must be positive and finite, got nan"),
        (["--lr", "inf"], "--lr must be positive and finite, got inf"),
        (["--correct-label-reward", "-1"], "--correct-label-reward must be a finite number >= 0"),
        (["--wrong-label-penalty", "nan"], "--wrong-label-penalty must be a finite number >= 0"),
        (["--p-factor", "inf"], "--p-factor must be a finite number >= 0"),
        (["--pid", "0.03", "-1", "0"], "--pid must be a finite number >= 0, got -1.0"),
        (["--lora-r", "-1"], "--lora-r must be 0 (off) or positive"),
        (["--lora-r", "4", "--lora-alpha", "0"], "--lora-alpha must be positive"),
        (["--lora-r", "4", "--lora-dropout", "1"], "--lora-dropout must be in [0, 1)"),
        (["--device", "gpu0"], "unknown --device 'gpu0'"),
    ],
)
def test_non_positive_sizes_and_rates(capsys, tmp_path, model_dir, data_csv, flags, message):
    argv = ["run", "--model", str(model_dir), "--dataset", str(data_csv), *flags, "--output", str(tmp_path / "out")]
    _fails(capsys, argv, message)
    _leaves_nothing(tmp_path / "out")


def test_evaluate_checks_its_sizes_too(capsys, tmp_path, model_dir, data_csv):
    argv = ["evaluate", "--model", str(model_dir), "--dataset", str(data_csv), "--test-samples", "0"]
    _fails(capsys, [*argv, "--output", str(tmp_path / "out")], "--test-samples must be at least 1")
    _leaves_nothing(tmp_path / "out")


# -------------------------------------------------------------------------------------------- training
def test_nan_loss_stops_keeps_the_last_good_checkpoint_and_marks_the_run_failed(
    capsys, tmp_path, model_dir, data_csv, monkeypatch
):
    patch_loss(monkeypatch, nan_from_step_2)
    out = tmp_path / "run"
    argv = ["run", "--model", str(model_dir), "--dataset", str(data_csv), *SMALL, "--no-fore-test", "--output", out]
    line = _fails(capsys, [str(a) for a in argv], "loss became nan at step 2; the last good checkpoint is kept")
    status = json.loads((out / "status.json").read_text())
    # status.json holds the library's wording (parameters by name), the CLI the same error with its flags
    assert status["state"] == "failed" and status["error"] == line.removeprefix("abft: error: ").replace("--lr", "lr")
    state = load_checkpoint(out / "checkpoint")  # the state after step 1, finite
    assert [r["step"] for r in state["records"]] == [1] and all(bool(p.isfinite().all()) for p in state["params"])
    assert [json.loads(x)["step"] for x in (out / "train_log.jsonl").read_text().splitlines()] == [1]
    assert not (out / "delta.safetensors").exists() and not list(out.rglob(".*.tmp"))


def test_disk_full_during_training_leaves_no_torn_file_and_resumes(capsys, tmp_path, model_dir, data_csv):
    """The disk fills up at the first checkpoint write and stays full: one line naming the fix, no half-written
    file, status.json still readable; once there is space again `--resume` finishes the run."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to tell which file is being written")
    real_fsync, full = os.fsync, []

    def fsync(fd):
        if full or "checkpoint" in os.readlink(f"/proc/self/fd/{fd}"):
            full.append(fd)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    out = tmp_path / "run"
    argv = ["run", "--model", str(model_dir), "--dataset", str(data_csv), *SMALL, "--output", str(out)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "fsync", fsync)
        line = _fails(capsys, argv, "No space left on device; free disk space")
    assert f"abft run --resume {out}" in line and full
    assert not list(out.rglob(".*.tmp")) and not (out / "checkpoint" / "state.pt").exists()
    assert json.loads((out / "status.json").read_text())["state"] == "running"  # could not even write "failed"
    with pytest.MonkeyPatch.context() as mp:  # the report (matplotlib) is not what this test is about
        mp.setattr("abft.report.html.write_report", lambda path: Path(path) / "report.html")
        assert main(["run", "--resume", str(out)]) == 0
    assert json.loads((out / "status.json").read_text())["state"] == "finished"


# ------------------------------------------------------------------------------------------ output dir
def test_output_under_a_file(capsys, tmp_path, model_dir, data_csv):
    (tmp_path / "file").write_text("x")
    argv = ["run", "--model", str(model_dir), "--dataset", str(data_csv), "--output", str(tmp_path / "file" / "run")]
    _fails(capsys, argv, "file is a file, not a directory; pick another --output")
    assert (tmp_path / "file").read_text() == "x"


def test_output_is_an_existing_file(capsys, tmp_path, model_dir, data_csv):
    (tmp_path / "file").write_text("x")
    argv = ["run", "--model", str(model_dir), "--dataset", str(data_csv), "--output", str(tmp_path / "file")]
    _fails(capsys, argv, "exists and is not an abft run directory; pick another --output")
    assert (tmp_path / "file").read_text() == "x"


def test_output_under_a_read_only_directory(capsys, tmp_path, model_dir, data_csv, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root may write anywhere: pretend the permission bits hold
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p) != locked and real_access(p, mode, **kw))
    argv = ["run", "--model", str(model_dir), "--dataset", str(data_csv), "--output", str(locked / "a" / "run")]
    _fails(capsys, argv, f"{locked} is not writable; pick another --output")
    assert not list(locked.iterdir())
    locked.chmod(0o755)


# ---------------------------------------------------------------------------------------------- pickles
class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling would call open(marker, "w"): creates the file
        return (open, (str(self.marker), "w"))


def test_dataset_pickle_with_a_global(capsys, tmp_path, model_dir, monkeypatch):
    """A tampered StaICC file is refused before anything runs, and nothing in it runs."""
    from abft.data import staicc

    marker = tmp_path / "pwned"
    (tmp_path / "sst2.dataset").write_bytes(pickle.dumps([(["w1"], 0), _Payload(marker)], protocol=4))
    monkeypatch.setattr(staicc, "staicc_data_dir", lambda: tmp_path)
    staicc._load.cache_clear()
    try:
        argv = ["run", "--model", str(model_dir), "--dataset", "sst2", "--output", str(tmp_path / "out")]
        _fails(capsys, argv, "contains a global (")
    finally:
        staicc._load.cache_clear()  # the real sst2 for the other tests
    assert not marker.exists()
    _leaves_nothing(tmp_path / "out")


def test_checkpoint_with_a_global_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "state.pt").write_bytes(pickle.dumps({"params": [_Payload(marker)]}, protocol=2))
    with pytest.raises(UserError, match="checkpoint .* cannot be read"):
        load_checkpoint(tmp_path / "checkpoint")
    assert not marker.exists()
    save_checkpoint(tmp_path / "checkpoint", {"params": [torch.ones(2)], "records": [{"step": 1, "loss": 0.5}]})
    assert load_checkpoint(tmp_path / "checkpoint")["records"] == [{"step": 1, "loss": 0.5}]  # ours still load


# ------------------------------------------------------------------------------------------------ deltas
@pytest.mark.parametrize("kind", ["other architecture", "other shape", "missing tensors", "garbage"])
def test_delta_that_does_not_match_the_model(capsys, tmp_path, model_dir, data_csv, kind):
    """`abft report RUN --with-model` loads the run's base model and delta.safetensors."""
    run = tmp_path / "run"
    run.mkdir()
    cfg = RunConfig()
    cfg.model.model, cfg.data.dataset, cfg.data.k = str(model_dir), str(data_csv), 2
    RunDir(run).write_config(json.loads(cfg.to_json()))  # bound to the run by its fingerprint
    delta = run / "delta.safetensors"
    if kind == "other architecture":
        gpt2 = tiny_gpt2()
        save_delta(gpt2, find_qk_slices(gpt2), delta)
        message = "does not match this model (it has tensor 'transformer.h.0.attn.c_attn.bias@k')"
    elif kind == "other shape":
        wide = tiny_llama(hidden_size=64)
        save_delta(wide, find_qk_slices(wide), delta)
        message = "has shape (32, 64), the model (16, 32); load it onto its base model"
    elif kind == "missing tensors":
        llama = tiny_llama()
        tensors = {f"{s.param}@{s.kind}": torch.zeros(1) for s in find_qk_slices(llama)[:1]}
        save_file(tensors, str(delta))
        message = "does not match this model (it lacks tensor"
    else:
        delta.write_bytes(b"not a safetensors file at all")
        message = "is not a readable safetensors file"
    _fails(capsys, ["report", str(run), "--with-model"], message)
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "delta.safetensors", "status.json"]


def test_overwrite_replaces_the_whole_run_directory(tmp_path):
    """--overwrite leaves nothing of the previous run (its figures, MAUVE texts, checkpoint) to be mistaken for
    the new one's; without it an existing run is refused."""
    from abft.rundir import RunDir

    old = RunDir.create(tmp_path / "run")
    for name in ("metrics.json", "mauve_before.jsonl", "figures/accuracy.png", "checkpoint/state.pt"):
        (old.path / name).parent.mkdir(exist_ok=True)
        (old.path / name).write_text("old")
    old.set_state("finished")
    with pytest.raises(UserError, match="already holds a finished run"):
        RunDir.create(old.path)
    old.release()  # the run ended (a live one is locked: test_hostile_input)
    new = RunDir.create(old.path, overwrite=True)
    assert sorted(p.name for p in new.path.iterdir()) == [".abft-run", "status.json"] and new.state() == "running"
