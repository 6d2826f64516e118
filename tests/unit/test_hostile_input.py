"""Hostile input (issue 18): code in a model directory, foreign or live run directories, tampered checkpoints
and configs, models with missing weights, ambiguous data, wrong-shaped JSON, absurd sizes, leftovers, signals.

Each case: one line `abft: error: ...` (exit 2) or a clean run, no traceback, nothing of the user's touched.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from objective_patches import nan_from_step_2, patch_loss
from test_bad_input import _fails
from toy_dataset import SMALL

from abft.cli import main


@pytest.fixture(scope="module")
def model_dir(tiny_word_model_dir):
    return tiny_word_model_dir


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


def _evil_model(model_dir, to, marker):
    """A copy of the tiny model whose config needs its own code (auto_map, unknown type); running it writes marker."""
    evil = _copy_model(model_dir, to)
    config = json.loads((evil / "config.json").read_text())
    config.update(model_type="evil", auto_map={"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.Evil"})
    (evil / "config.json").write_text(json.dumps(config))
    (evil / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    return evil


def test_model_directory_with_custom_code_is_refused_without_running_it(capsys, tmp_path, model_dir, data_csv):
    """auto_map + an unknown model type: transformers would ask on stdin and, told yes, import the .py file."""
    marker = tmp_path / "pwned"
    evil = _evil_model(model_dir, tmp_path / "evil", marker)
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
    evil = _evil_model(model_dir, tmp_path / "evil", marker)
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


# ------------------------------------------------------------------------------ checkpoints and configs
@pytest.fixture
def failed_run(capsys, tmp_path, model_dir, data_csv, monkeypatch):
    """A run whose loss became NaN at step 2 of 2: status failed, a checkpoint after step 1."""
    out = tmp_path / "run"
    with monkeypatch.context() as mp:
        patch_loss(mp, nan_from_step_2)
        assert main(_run(model_dir, data_csv, out, "--no-fore-test", "--no-post-test")) == 2
    capsys.readouterr()
    assert json.loads((out / "status.json").read_text())["state"] == "failed"
    return out


def _edit_checkpoint(run: Path, edit) -> None:
    import torch

    path = run / "checkpoint" / "state.pt"
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)


def _zero_one(state):
    import torch

    state["params"][0] = torch.zeros(1)


def _drop_one(state):
    state["params"].pop()


def _many_records(state):
    state["records"] = [{**state["records"][0], "step": n} for n in range(1, 53)]


def _half_precision_shape(state):
    state["params"][1] = state["params"][1][:1]


@pytest.mark.parametrize(
    "edit, message",
    [
        (_zero_one, "tensor 0 is (1,) torch.float32, the parameter"),
        (_drop_one, "tensors for"),
        (_many_records, "52 step records for a plan of 2 steps"),
        (_half_precision_shape, "tensor 1 is (1,"),
    ],
)
def test_tampered_checkpoint_is_refused(capsys, failed_run, edit, message):
    _edit_checkpoint(failed_run, edit)
    before = _tree(failed_run)
    line = _fails(capsys, ["run", "--resume", str(failed_run)], message)
    assert "does not belong to this run" in line
    after = _tree(failed_run)  # config.json rewritten as it was, status.json says why the resume failed
    assert {k: v[1] for k, v in after.items() if k != "status.json"} == {
        k: v[1] for k, v in before.items() if k != "status.json"
    }


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: {}, "is not the configuration this run was started with"),
        (lambda c: {**c, "train": {**c["train"], "lr": 0.5}}, "is not the configuration this run was started with"),
        (lambda c: {**c, "data": {**c["data"], "k": 4}}, "is not the configuration this run was started with"),
        (lambda c: [c], "no readable config.json"),
    ],
)
def test_edited_config_is_refused_on_resume(capsys, failed_run, edit, message):
    config = json.loads((failed_run / "config.json").read_text())
    (failed_run / "config.json").write_text(json.dumps(edit(config)))
    before = _tree(failed_run)
    _fails(capsys, ["run", "--resume", str(failed_run)], message)
    assert _tree(failed_run) == before


def test_config_of_the_wrong_type_is_refused_even_with_a_matching_fingerprint(capsys, failed_run):
    """Its fingerprint recomputed (as a user could): still checked like command-line input."""
    from abft.rundir import config_fingerprint

    config = json.loads((failed_run / "config.json").read_text())
    config["data"]["k"] = "two"
    status = json.loads((failed_run / "status.json").read_text())
    (failed_run / "config.json").write_text(json.dumps(config))
    (failed_run / "status.json").write_text(json.dumps({**status, "config_sha256": config_fingerprint(config)}))
    _fails(capsys, ["run", "--resume", str(failed_run)], "'data.k' must be int, got 'two'")


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("train.lr", 1e39, "--lr must be at most 1.0"),
        ("train.method", "sgd", "'train.method' must be one of ['abft', 'e2e']"),
        ("train.pid", [1, 2], "'train.pid' must be 3 float values"),
        ("eval.test_type", ["normal", "nope"], "'eval.test_type' must be one or more str values"),
        ("checkpoint_every", 0, "--checkpoint-every must be at least 1"),
        ("seed", True, "'seed' must be int"),
        ("bogus", 1, "unknown keys ['bogus']"),
    ],
)
def test_config_values_are_checked_like_flags(capsys, failed_run, key, value, message):
    from abft.rundir import config_fingerprint

    config = json.loads((failed_run / "config.json").read_text())
    section, _, name = key.rpartition(".")
    (config[section] if section else config)[name] = value
    status = json.loads((failed_run / "status.json").read_text())
    (failed_run / "config.json").write_text(json.dumps(config))
    (failed_run / "status.json").write_text(json.dumps({**status, "config_sha256": config_fingerprint(config)}))
    _fails(capsys, ["run", "--resume", str(failed_run)], message)


def test_resume_refuses_flags_it_would_ignore(capsys, failed_run):
    before = _tree(failed_run)
    _fails(capsys, ["run", "--resume", str(failed_run), "--k", "3"], "--k cannot be given with --resume")
    _fails(capsys, ["run", "--resume", str(failed_run), "--overwrite"], "--overwrite cannot be given with --resume")
    assert _tree(failed_run) == before


def test_resume_with_a_lower_lr_applies_it_to_adam_and_records_it(capsys, failed_run, monkeypatch):
    import torch

    used = []
    step = torch.optim.Adam.step
    monkeypatch.setattr(
        torch.optim.Adam, "step", lambda self, *a, **k: used.append(self.param_groups[0]["lr"]) or step(self, *a, **k)
    )
    original = json.loads((failed_run / "config.json").read_text())["train"]["lr"]  # what the recipe chose
    assert main(["run", "--resume", str(failed_run), "--lr", "1e-6"]) == 0
    assert used == [1e-6]
    assert json.loads((failed_run / "config.json").read_text())["train"]["lr"] == 1e-6
    log = [json.loads(line) for line in (failed_run / "train_log.jsonl").read_text().splitlines()]
    assert [(r["step"], r["lr"]) for r in log] == [(1, original), (2, 1e-6)] and original != 1e-6


# --------------------------------------------------------------------------------- signals, leftovers
def test_sigterm_is_recorded_like_ctrl_c_and_resume_cleans_temporaries(
    capsys, tmp_path, model_dir, data_csv, monkeypatch
):
    import signal

    out = tmp_path / "run"
    with monkeypatch.context() as mp:
        patch_loss(mp, lambda loss, n: os.kill(os.getpid(), signal.SIGTERM) or loss)
        assert main(_run(model_dir, data_csv, out, "--no-fore-test", "--no-post-test")) == 130
    err = capsys.readouterr().err.strip()
    assert err == f"abft: interrupted; continue with `abft run --resume {out}`"
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "interrupted" and f"abft run --resume {out}" in status["error"]
    leftover = out / ".metrics.json.x1y2.tmp"  # as a SIGKILL mid-write leaves it
    leftover.write_text("{")
    assert main(["run", "--resume", str(out)]) == 0
    assert not leftover.exists() and json.loads((out / "status.json").read_text())["state"] == "finished"


def test_dead_gguf_conversions_are_removed_live_ones_kept(tmp_path):
    from abft.models.loading import remove_dead_conversions

    dead, live, old = tmp_path / ".tmp-999999999-ab", tmp_path / f".tmp-{os.getpid()}-cd", tmp_path / ".tmp-x9"
    for d in (dead, live, old):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"0" * 10)
    remove_dead_conversions(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name]


# ------------------------------------------------------------------------ numbers and JSON of any shape
@pytest.mark.parametrize(
    "flags, message",
    [
        (["--lr", "1e39"], "--lr must be at most 1.0, got 1e+39"),
        (["--test-samples", "1000000000"], "--test-samples 1000000000 is more than abft allows (1048576 at most)"),
        (["--train-samples", "1000000000"], "--train-samples 1000000000 is more than abft allows"),
        (["--epochs", "100000000"], "--epochs x --train-samples 800000000 is more than abft allows"),
        (["--eval-batch-size", "1000000000"], "--eval-batch-size 1000000000 is more than abft allows"),
        (["--seed", str(2**64)], "--seed must be between -2^63 and 2^63"),
    ],
)
def test_absurd_numbers_are_refused_at_once(capsys, tmp_path, model_dir, data_csv, flags, message):
    _fails(capsys, _run(model_dir, data_csv, tmp_path / "out", *flags), message)
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, model_dir, data_csv):
    out = tmp_path_factory.mktemp("finished") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ABFT_NO_PROGRESS", "1")
        mp.setattr("abft.report.html.write_report", lambda path: Path(path) / "report.html")
        assert main(_run(model_dir, data_csv, out, "--no-fore-test", "--no-post-test")) == 0
    return out


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--eval-batch-size", "0"], "--eval-batch-size must be at least 1, got 0"),
        (["--grid", "100000"], "--grid 100000 is more than abft allows (101 at most)"),
        (["--test-samples", "1000000000"], "--test-samples 1000000000 is more than abft allows"),
        (["--range", "0", "inf"], "--range needs finite LOW < HIGH"),
    ],
)
def test_interpolate_numbers(capsys, tmp_path, finished_run, flags, message):
    _fails(
        capsys, ["interpolate", str(finished_run), str(finished_run), "--output", str(tmp_path / "i"), *flags], message
    )
    assert not (tmp_path / "i").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["heads", "--samples", "1000000000"], "--samples 1000000000 is more than abft allows"),
        (["ceiling", "--samples", "1000000000"], "--samples 1000000000 is more than abft allows"),
        (["heads", "--circuit-factor", "nan"], "--circuit-factor must be a finite number, got nan"),
        (["heads", "--seed", str(2**70)], "--seed must be between"),
    ],
)
def test_analysis_sizes_are_bounded(capsys, tmp_path, model_dir, data_csv, argv, message):
    out = tmp_path / "out"
    _fails(
        capsys,
        [*argv, "--model", str(model_dir), "--dataset", str(data_csv), "--k", "2", "--output", str(out)],
        message,
    )
    assert not out.exists()


@pytest.mark.parametrize("name", ["status.json", "metrics.json"])
@pytest.mark.parametrize("value", [[1, 2], "running", 3, {"state": ["finished"]}, {"before": 7}])
def test_run_files_of_the_wrong_shape(capsys, tmp_path, finished_run, name, value):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / name).write_text(json.dumps(value))
    assert main(["report", str(run)]) in (0, 2)
    assert main(["run", "--resume", str(run)]) in (0, 2)
    assert main(_run("unused", "unused.csv", run)) == 2  # no --overwrite: never a traceback deciding that
    assert "Traceback" not in capsys.readouterr().err


def test_fore_test_cache_entry_of_the_wrong_shape_is_a_miss(capsys, tmp_path, model_dir, data_csv, private_cache):
    argv = [*_run(model_dir, data_csv, tmp_path / "a", "--reuse-fore-test", "--no-post-test")]
    assert main(argv) == 0
    (entry,) = (private_cache / "fore-test").glob("*.json")
    good = entry.read_text()
    for bad in ("[1, 2]", '{"accuracy": "high"}', '{"sha256": "x", "before": {"accuracy": 1}}', "{"):
        entry.write_text(bad)
        out = tmp_path / f"run{len(bad)}"
        assert main(_run(model_dir, data_csv, out, "--reuse-fore-test", "--no-post-test")) == 0
        assert "reused" not in capsys.readouterr().out
        assert entry.read_text() == good  # rewritten by the fresh fore-test


def test_fore_test_cache_entry_that_does_not_fit_is_ignored_with_one_line(
    capsys, tmp_path, model_dir, data_csv, private_cache
):
    """Entries with a valid digest (anyone can compute one) but per-prompt probabilities or a before block that
    do not fit the run: one note, a fresh fore-test, predictions_before.jsonl written either way."""
    from abft.evaluation import fore_cache

    assert main(_run(model_dir, data_csv, tmp_path / "a", "--reuse-fore-test", "--no-post-test")) == 0
    (path,) = (private_cache / "fore-test").glob("*.json")
    good, entry = path.read_text(), json.loads(path.read_text())
    before, probs = entry["before"], entry["probs"]
    predictions = (tmp_path / "a" / "predictions_before.jsonl").read_text()
    bad = [
        (before, probs[:-1]),  # one prompt short
        (before, [[str(x) for x in row] for row in probs]),  # strings
        (before, [[2 * x for x in row] for row in probs]),  # not distributions
        (before, [row[::-1] for row in probs]),  # other predictions than its accuracy says
        ({k: v for k, v in before.items() if k != "macro_f1"}, probs),  # a field the log line reads
        (before, None),  # no per-prompt probabilities
    ]
    capsys.readouterr()
    for i, (b, p) in enumerate([(before, probs), *bad]):
        path.write_text(json.dumps({"sha256": fore_cache._digest(b, p), "before": b, "probs": p}) + "\n")
        out = tmp_path / f"run{i}"
        assert main(_run(model_dir, data_csv, out, "--reuse-fore-test", "--no-post-test")) == 0
        printed = capsys.readouterr()
        notes = [line for line in printed.out.splitlines() if "fore-test cache entry" in line]
        assert len(notes) == (i > 0) and ("reused from the fore-test cache" in printed.out) == (i == 0)
        assert "Traceback" not in printed.err and path.read_text() == good
        assert (out / "predictions_before.jsonl").read_text() == predictions
    path.unlink()
    os.mkfifo(path)  # would block a plain read
    assert main(_run(model_dir, data_csv, tmp_path / "fifo", "--reuse-fore-test", "--no-post-test")) == 0
    assert "ignored (not a regular file)" in capsys.readouterr().out and path.read_text() == good


@pytest.mark.parametrize(
    "argv",
    [
        ["ceiling", "--delta", "{run}", "--samples", "2", "--edits", "none", "--output", "{out}"],
        ["interpolate", "{run}", "{run}", "--grid", "2", "--test-samples", "2", "--output", "{out}"],
        ["report", "{run}", "--with-model"],
    ],
)
def test_commands_on_a_run_refuse_its_edited_config_before_loading_a_model(
    capsys, tmp_path, finished_run, monkeypatch, argv
):
    """An emptied config.json would name the default model (all defaults): refused by its fingerprint instead."""
    import shutil

    import abft.models

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "config.json").write_text("{}")
    monkeypatch.setattr(abft.models, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    argv = [a.format(run=run, out=tmp_path / "out") for a in argv]
    _fails(capsys, argv, "is not the configuration this run was started with")
    assert not (tmp_path / "out").exists()


def test_gguf_conversion_writes_no_progress_bar_when_progress_is_off(capsys, monkeypatch):
    """transformers' own tqdm bar (GGUF dequantisation) would put \\r-lines into logs and one-line errors."""
    from tqdm.auto import tqdm

    from abft.progress import quiet_unless_enabled

    monkeypatch.setenv("ABFT_NO_PROGRESS", "1")
    with quiet_unless_enabled():
        for _ in tqdm(range(3), desc="Converting"):
            pass
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("drop", ["model", "train.lr", "seed"])
def test_a_config_missing_a_setting_is_refused_even_with_a_matching_fingerprint(capsys, failed_run, drop):
    """Filled with today's default, an emptied "model" would resume the default model over another's checkpoint."""
    from abft.rundir import config_fingerprint

    config = json.loads((failed_run / "config.json").read_text())
    section, _, name = drop.rpartition(".")
    if name == "model":
        config["model"] = {}
    else:
        del (config[section] if section else config)[name]
    status = json.loads((failed_run / "status.json").read_text())
    (failed_run / "config.json").write_text(json.dumps(config))
    (failed_run / "status.json").write_text(json.dumps({**status, "config_sha256": config_fingerprint(config)}))
    before = _tree(failed_run)
    _fails(capsys, ["run", "--resume", str(failed_run)], "is missing (abft writes every setting")
    assert {k: v[1] for k, v in _tree(failed_run).items() if k != "status.json"} == {
        k: v[1] for k, v in before.items() if k != "status.json"
    }
