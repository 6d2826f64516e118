"""Hostile input (issue 18): code in a model directory, foreign or live run directories, tampered checkpoints
and configs, models with missing weights, ambiguous data, wrong-shaped JSON, absurd sizes, leftovers, signals.

Each case: one line `abft: error: ...` (exit 2) or a clean run, no traceback, nothing of the user's touched.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_bad_input import SMALL, _fails, data_csv, model_dir  # noqa: F401 - fixtures

from abft.cli import main


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
    line = _fails(capsys, _run(broken, data_csv, tmp_path / "out"), "weight tensor(s) its config.json needs (model.layers.")
    assert ("model.layers.1." if damage == "a layer removed" else "model.layers.2.") in line
    assert not (tmp_path / "out").exists()
