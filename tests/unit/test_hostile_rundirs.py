"""Property: every command that reads a run directory, given a malformed one (config.json, status.json,
metrics.json, checkpoint), exits 0 or 2 with no traceback, and a refusal changes nothing abft did not create.

Hypothesis mutates copies of two real tiny runs (a failed one with a checkpoint, a finished one with a delta).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, Phase, event, example, given, settings
from hypothesis import strategies as st
from objective_patches import nan_from_step_2, patch_loss
from toy_dataset import SMALL, toy_csv

import abft.report.html
import abft.train
from abft.cli import main
from abft.rundir import config_fingerprint

REAL_REPORT = abft.report.html.write_report
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
FILES = ("config.json", "status.json", "metrics.json")
# keep; delete; bytes that are not JSON; any JSON value; one value inside the object set to any JSON value (with
# config.json's fingerprint recomputed, as a user could, so the value checks are reached)
EDIT = st.one_of(
    st.just(("keep",)),
    st.just(("delete",)),
    st.tuples(st.just("bytes"), st.binary(max_size=8)),
    st.tuples(st.just("replace"), JSON),
    st.tuples(st.just("set"), st.integers(0, 200), JSON),
)
CHECKPOINT = st.one_of(
    st.just(("keep",)),
    st.just(("delete",)),
    st.tuples(st.just("bytes"), st.binary(max_size=16)),
    st.tuples(st.just("replace"), JSON),
    st.tuples(st.just("tensor"), st.integers(0, 20), st.lists(st.integers(0, 40), max_size=3)),
    st.tuples(st.just("records"), JSON),
    st.tuples(st.just("key"), st.sampled_from(["params", "optimizer", "controller", "rng", "records"]), JSON),
)
COMMANDS = ("resume", "report", "interpolate", "ceiling")


@pytest.fixture(scope="module")
def bases(tmp_path_factory, tiny_word_model_dir):
    """{"failed": a run stopped at step 2 of 2 (checkpoint after step 1), "finished": a run with its delta}."""
    root = tmp_path_factory.mktemp("bases")
    data = root / "reviews.csv"
    data.write_text(toy_csv(400))
    argv = ["run", "--model", str(tiny_word_model_dir), "--dataset", str(data), *SMALL, "--no-post-test"]

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ABFT_NO_PROGRESS", "1")
        mp.setattr(abft.report.html, "write_report", lambda path: Path(path) / "report.html")
        assert main([*argv, "--no-fore-test", "--output", str(root / "finished")]) == 0
        patch_loss(mp, nan_from_step_2)
        with contextlib.redirect_stderr(io.StringIO()):
            assert main([*argv, "--no-fore-test", "--output", str(root / "failed")]) == 2
    return {"failed": root / "failed", "finished": root / "finished"}


def _paths(value, prefix=()):
    """Every key path of a JSON object (nested objects included)."""
    out = []
    if isinstance(value, dict):
        for key, inner in value.items():
            out.append((*prefix, key))
            out += _paths(inner, (*prefix, key))
    return out


def _edit_json(run: Path, name: str, edit) -> None:
    path = run / name
    if edit[0] == "delete":
        path.unlink(missing_ok=True)
    elif edit[0] == "bytes":
        path.write_bytes(edit[1])
    elif edit[0] == "replace":
        path.write_text(json.dumps(edit[1]))
    elif edit[0] == "set" and path.is_file():
        value = json.loads(path.read_text())
        paths = _paths(value)
        if paths:
            *parents, key = paths[edit[1] % len(paths)]
            target = value
            for parent in parents:
                target = target[parent]
            target[key] = edit[2]
            path.write_text(json.dumps(value))
            if name == "config.json":  # recompute the fingerprint, as a determined user could
                status = json.loads((run / "status.json").read_text())
                (run / "status.json").write_text(json.dumps({**status, "config_sha256": config_fingerprint(value)}))


def _edit_checkpoint(run: Path, edit) -> None:
    path = run / "checkpoint" / "state.pt"
    if edit[0] == "keep" or not path.is_file():
        return
    if edit[0] == "delete":
        path.unlink()
    elif edit[0] == "bytes":
        path.write_bytes(edit[1])
    elif edit[0] == "replace":
        torch.save(edit[1], path)
    else:
        state = torch.load(path, weights_only=True)
        if edit[0] == "tensor":
            state["params"][edit[1] % len(state["params"])] = torch.zeros(edit[2])
        elif edit[0] == "records":
            state["records"] = edit[1]
        else:
            state[edit[1]] = edit[2]
        torch.save(state, path)


def _snapshot(root: Path) -> dict:
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in root.rglob("*")
        if p.is_file()
    }


def _argv(command: str, run: Path, other: Path, out: Path) -> list[str]:
    return {
        "resume": ["run", "--resume", str(run)],
        "report": ["report", str(run)],
        "interpolate": [
            "interpolate",
            str(run),
            str(other),
            "--grid",
            "2",
            "--test-samples",
            "2",
            "--output",
            str(out),
        ],
        "ceiling": ["ceiling", "--delta", str(run), "--samples", "2", "--edits", "none", "--output", str(out)],
    }[command]


@settings(
    max_examples=20,  # each example runs a command on a tiny model (~1-5 s)
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],  # no explain phase: minutes on a failure
)
# Found by CI: an emptied config naming the default model (refused by its fingerprint, before any load); a NaN config;
# a resume refused for its unreadable checkpoint after rewriting config.json (its "runtime" emptied, fingerprint redone).
@example(
    base="finished",
    edits=(("replace", {}), ("bytes", b""), ("delete",)),
    checkpoint=("tensor", 13, [34]),
    command="ceiling",
)
@example(base="failed", edits=(("replace", float("nan")), ("keep",), ("keep",)), checkpoint=("keep",), command="resume")
@example(base="failed", edits=(("set", 60, {}), ("keep",), ("keep",)), checkpoint=("bytes", b""), command="resume")
@given(
    base=st.sampled_from(["failed", "finished"]),
    edits=st.tuples(EDIT, EDIT, EDIT),
    checkpoint=CHECKPOINT,
    command=st.sampled_from(COMMANDS),
)
def test_commands_on_malformed_run_directories(bases, monkeypatch, base, edits, checkpoint, command):
    monkeypatch.setenv("ABFT_NO_PROGRESS", "1")
    monkeypatch.setattr(abft.report.html, "write_report", REAL_REPORT if command == "report" else (lambda p: p))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run, other = root / "run", root / "other"
        shutil.copytree(bases[base], run)
        shutil.copytree(bases["finished"], other)
        (root / "notes.txt").write_text("the user's")
        for name, edit in zip(FILES, edits, strict=True):
            _edit_json(run, name, edit)
        _edit_checkpoint(run, checkpoint)
        before, config = _snapshot(root), _without_output(run / "config.json")
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main(_argv(command, run, other, root / "out"))
        assert rc in (0, 2) and "Traceback" not in err.getvalue(), err.getvalue()
        event(f"{command}: exit {rc}")  # pytest --hypothesis-show-statistics: how often each command got through
        after = _snapshot(root)
        assert after["notes.txt"] == before["notes.txt"]
        assert {k: v for k, v in after.items() if k.startswith("other/")} == {
            k: v for k, v in before.items() if k.startswith("other/")
        }
        if rc == 2:  # refused: what was there is as it was, but status.json may say why a reopened run stopped
            assert len(err.getvalue().strip().splitlines()) == 1
            changed = {k for k in before if after.get(k, (0, ""))[1] != before[k][1]}
            assert changed <= {"run/status.json", "run/config.json"}, changed
            assert _without_output(run / "config.json") == config  # its "output" follows the moved directory


def _without_output(path: Path):
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return path.read_bytes() if path.is_file() else None
    if isinstance(config, dict):
        config = {k: v for k, v in config.items() if k != "output"}
    return json.dumps(config, sort_keys=True)  # text: a NaN anywhere in it compares equal to itself
