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
