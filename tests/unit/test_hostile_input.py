"""Hostile input (issue 18): code in a model directory, foreign or live run directories, tampered checkpoints
and configs, models with missing weights, ambiguous data, wrong-shaped JSON, absurd sizes, leftovers, signals.

Each case: one line `abft: error: ...` (exit 2) or a clean run, no traceback, nothing of the user's touched.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_bad_input import SMALL, _fails, _rows

from abft.cli import main


@pytest.fixture(scope="module")
def model_dir(tiny_word_model_dir):
    return tiny_word_model_dir


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "reviews.csv"
    path.write_text(_rows(400))
    return path


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("ABFT_NO_PROGRESS", "1")
    monkeypatch.setattr("abft.report.html.write_report", lambda path: Path(path) / "report.html")


def _run(model_dir, dataset, out, *flags) -> list[str]:
    return ["run", "--model", str(model_dir), "--dataset", str(dataset), *SMALL, "--output", str(out), *flags]


# ------------------------------------------------------------------------------------------------ data
def test_duplicate_csv_column_is_refused(capsys, tmp_path, model_dir):
    data = tmp_path / "dup.csv"
    data.write_text("text,label,text\n" + "".join(f"w{i},negative,\n" for i in range(50)))
    _fails(capsys, _run(model_dir, data, tmp_path / "out"), "has the column(s) ['text'] more than once")
    assert not (tmp_path / "out").exists()


def test_empty_texts_warn_on_one_line(capsys, tmp_path):
    from abft.data.userdata import load_user_dataset

    data = tmp_path / "blank.csv"
    data.write_text("text,label\n" + "".join(f"{'' if i % 2 else 'w1'},{('a', 'b')[i % 2]}\n" for i in range(20)))
    load_user_dataset(data)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"abft: warning: {data}: 10 of 20 texts in 'text' are empty"]


def test_fifo_as_dataset_is_refused_without_blocking(capsys, tmp_path, model_dir):
    fifo = tmp_path / "data.csv"
    os.mkfifo(fifo)
    _fails(capsys, _run(model_dir, fifo, tmp_path / "out"), "is not a regular file")


# ----------------------------------------------------------------------------------------------- models
def _copy_model(model_dir, to: Path) -> Path:
    import shutil

    shutil.copytree(model_dir, to)
    return to


def test_model_directory_with_custom_code_is_refused_without_running_it(capsys, tmp_path, model_dir, data_csv):
    """auto_map + an unknown model type: transformers would ask on stdin and, told yes, import the .py file."""
    marker = tmp_path / "pwned"
    evil = _copy_model(model_dir, tmp_path / "evil")
    config = json.loads((evil / "config.json").read_text())
    config.update(model_type="evil", auto_map={"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.Evil"})
    (evil / "config.json").write_text(json.dumps(config))
    (evil / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    stdin = tmp_path / "yes"
    stdin.write_text("y\ny\n")
    with open(stdin) as answers, pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.stdin", answers)  # a prompt, if any, would be answered "y"
        _fails(capsys, _run(evil, data_csv, tmp_path / "out"), "unless you pass --trust-remote-code")
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_custom_code_is_not_run_by_the_loader_itself(tmp_path, model_dir):
    """Past abft's own check (a hub id, a known model type): transformers is told trust_remote_code=False."""
    from abft.errors import UserError
    from abft.models import loading

    marker = tmp_path / "pwned"
    evil = _copy_model(model_dir, tmp_path / "evil")
    config = json.loads((evil / "config.json").read_text())
    config.update(model_type="evil", auto_map={"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.Evil"})
    (evil / "config.json").write_text(json.dumps(config))
    (evil / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loading, "refuse_custom_code", lambda directory: None)
        mp.setattr("sys.stdin", open(os.devnull))
        with pytest.raises(UserError, match="needs its own Python code"):
            loading.load_model(str(evil), device="cpu")
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["a layer removed", "config declares more layers"])
def test_model_with_missing_weights_is_refused_naming_them(capsys, tmp_path, model_dir, data_csv, damage):
    from safetensors.torch import load_file, save_file

    broken = _copy_model(model_dir, tmp_path / "broken")
    if damage == "a layer removed":
        tensors = load_file(broken / "model.safetensors")
        kept = {name: t for name, t in tensors.items() if ".layers.1." not in name}
        save_file(kept, str(broken / "model.safetensors"), metadata={"format": "pt"})
    else:
        config = json.loads((broken / "config.json").read_text())
        (broken / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 6}))
    argv = _run(broken, data_csv, tmp_path / "out")
    line = _fails(capsys, argv, "weight tensor(s) its config.json needs (model.layers.")
    assert ("model.layers.1." if damage == "a layer removed" else "model.layers.2.") in line
    assert not (tmp_path / "out").exists()


# -------------------------------------------------------------------------------------- run directories
def _tree(root: Path) -> dict:
    """Every path under `root` with its content hash and mtime: what a command must leave unchanged."""
    import hashlib

    return {
        str(p.relative_to(root)): (
            p.stat().st_mtime_ns,
            hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "",
        )
        for p in sorted(root.rglob("*"))
    }


def test_overwrite_refuses_a_directory_abft_did_not_create(capsys, tmp_path, model_dir, data_csv):
    """A status.json with a "state" is not enough: without abft's marker nothing is deleted."""
    notes = tmp_path / "notes"
    (notes / "sub").mkdir(parents=True)
    (notes / "status.json").write_text('{"state": "finished"}')
    (notes / "notes.txt").write_text("mine")
    (notes / "sub" / "more.txt").write_text("mine too")
    before = _tree(notes)
    _fails(capsys, _run(model_dir, data_csv, notes, "--overwrite"), "no .abft-run marker: abft did not create it")
    assert _tree(notes) == before


def test_a_live_run_locks_its_directory_against_every_second_writer(capsys, tmp_path, model_dir, data_csv):
    from abft.rundir import RunDir

    out = tmp_path / "run"
    live = RunDir.create(out)  # this process's run, still going
    live.write_config({"command": "run"})
    before = _tree(out)
    _fails(capsys, _run(model_dir, data_csv, out, "--overwrite"), "is in use by a running abft process")
    _fails(capsys, ["run", "--resume", str(out)], "is in use by a running abft process")
    with pytest.raises(Exception, match="in use"):
        RunDir.create(out, overwrite=True)
    assert _tree(out) == before
    live.release()
    assert main(_run(model_dir, data_csv, out, "--overwrite", "--no-fore-test", "--no-post-test")) == 0


def test_a_killed_run_leaves_no_stale_lock(tmp_path):
    import signal
    import subprocess
    import sys

    out = tmp_path / "run"
    code = f"from abft.rundir import RunDir; RunDir.create({str(out)!r}); print('locked', flush=True); input()"
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        from abft.errors import UserError
        from abft.rundir import RunDir

        with pytest.raises(UserError, match="in use"):
            RunDir.check_resumable(out)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        child.kill()
    RunDir.check_resumable(out)  # the OS released the lock with the process
    assert RunDir.reopen(out).state() == "running"
