"""Crafted files abft reads (fore-test cache entries, predictions, metrics.json, report input): a one-line refusal or
a miss, never a traceback (found by a review of the fore-test cache, paired change and report changes)."""

import json

import pytest

from abft.config import RunConfig
from abft.evaluation import fore_cache

GOLDS = [0, 1]


@pytest.fixture
def model_dir(tiny_word_model_dir):
    return tiny_word_model_dir


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("ABFT_NO_PROGRESS", "1")


PROBS = [[0.9, 0.1], [0.2, 0.8]]


def _before(**extra):
    before = {"accuracy": 1.0, "macro_f1": 1.0, "copies_last_label": 0.5, "prompts": 2}
    return {**before, **extra}


def _write(private_cache, before, probs):
    (private_cache / "fore-test").mkdir(exist_ok=True)
    entry = {"sha256": fore_cache._digest(before, probs), "before": before, "probs": probs}
    (private_cache / "fore-test" / "k.json").write_text(json.dumps(entry))


def test_fore_cache_sanity(private_cache):
    _write(private_cache, _before(), PROBS)
    assert fore_cache.load("k", RunConfig(), GOLDS, 2).before["accuracy"] == 1.0


@pytest.mark.parametrize(
    "before, probs",
    [
        (_before(), [[10**400, 0], [0.2, 0.8]]),  # np.asarray(float64): OverflowError
        (_before(macro_f1=10**400), PROBS),  # f"{x:.4f}" in stage_lines: OverflowError
    ],
)
def test_fore_cache_entry_with_a_huge_integer_is_a_bad_entry(private_cache, before, probs):
    _write(private_cache, before, probs)
    with pytest.raises(fore_cache.BadEntry):
        fore_cache.load("k", RunConfig(), GOLDS, 2)


def test_paired_change_of_nested_predictions_is_none(tmp_path):
    from abft.rundir import RunDir
    from abft.runner import _read_predictions

    (tmp_path / "predictions_before.jsonl").write_text("[" * 100_000 + "]" * 100_000 + "\n")
    assert _read_predictions(RunDir(tmp_path), "before") is None  # RecursionError escapes today


def test_fore_cache_entry_accepted_by_load_then_crashes_the_generalization_table(private_cache):
    """stage_lines only checks the fields of the log lines; generalization_table reads more (in_domain, the
    datasets' accuracies): an entry load() accepts ends the run (after training) in a KeyError."""
    from abft.evaluation import suites

    cfg = RunConfig()
    cfg.eval.generalization_test = True
    gen = {"in_domain_accuracy": 0.5, "out_of_domain_accuracy": None, "datasets": {}}
    _write(private_cache, _before(generalization=gen), PROBS)
    try:
        entry = fore_cache.load("k", cfg, GOLDS, 2)  # accepted today as fitting this run
    except fore_cache.BadEntry:
        return  # the fix: refused here
    after = {"in_domain": "x", "in_domain_accuracy": 0.5, "out_of_domain_accuracy": None, "datasets": {}}
    suites.generalization_table(entry.before["generalization"], after)  # KeyError: 'in_domain'


def test_report_of_deeply_nested_records_is_a_one_line_refusal(capsys, tmp_path):
    import dataclasses

    from abft.cli import main

    value = 1
    for _ in range(300):  # 600 JSON levels: json.loads and RunDir.read_json take it
        value = [{"a": value}]
    (tmp_path / "config.json").write_text(json.dumps(dataclasses.asdict(RunConfig())))
    (tmp_path / "metrics.json").write_text(json.dumps({"before": {"accuracy": 0.5}, "x": value}))
    assert main(["report", str(tmp_path)]) in (0, 2)  # RecursionError in report.html._cell -> table -> _cell


def test_resumed_run_with_a_stale_change_in_metrics_json(capsys, tmp_path, model_dir, data_csv, monkeypatch):
    """metrics.json's "change" is only overwritten when both predictions files read back; otherwise the one
    read from the (resumed, editable) metrics.json is kept and summary_table subscripts it."""
    from objective_patches import nan_from_step_2, patch_loss
    from test_hostile_input import _run

    from abft.cli import main

    out = tmp_path / "run"
    with monkeypatch.context() as mp:
        patch_loss(mp, nan_from_step_2)
        assert main(_run(model_dir, data_csv, out)) == 2  # fore-test done, training failed at step 2
    metrics = json.loads((out / "metrics.json").read_text())
    assert "before" in metrics
    (out / "metrics.json").write_text(json.dumps({**metrics, "change": 5}))
    (out / "predictions_before.jsonl").unlink()
    capsys.readouterr()
    assert main(["run", "--resume", str(out)]) == 0  # TypeError: 'int' object is not subscriptable
    assert "change" not in json.loads((out / "metrics.json").read_text())


def test_fore_cache_directory_without_permission_is_a_miss_or_bad_entry(private_cache, monkeypatch):
    """As a non-root user, Path.exists() raises PermissionError for a file in a directory without x permission
    (Python 3.11; reproduced with setpriv as uid 65534): load() used to catch OSError around the read."""
    from pathlib import Path

    exists = Path.exists

    def denied(self):
        if self.parent.name == "fore-test":
            raise PermissionError(13, "Permission denied", str(self))
        return exists(self)

    monkeypatch.setattr(Path, "exists", denied)
    try:
        assert fore_cache.load("k", RunConfig(), GOLDS, 2) is None
    except fore_cache.BadEntry:
        pass
