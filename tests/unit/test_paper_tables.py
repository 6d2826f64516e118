"""benchmarks/paper_tables.py: which commands a cell runs, what it skips, and the JSON it writes."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import paper_tables  # noqa: E402


def _stage(accuracy, out_of_domain):
    generalization = {"in_domain": "sst2", "in_domain_accuracy": accuracy, "out_of_domain_accuracy": out_of_domain,
                      "datasets": {"sst2": {"accuracy": accuracy}, "trec": {"accuracy": out_of_domain}}}  # fmt: skip
    return {"accuracy": accuracy, "accuracy_se": 0.03, "macro_f1": accuracy, "copies_last_label": 0.5,
            "prompts": 256, "template": {"consistency": accuracy}, "generalization": generalization}  # fmt: skip


@pytest.fixture
def fake_abft(monkeypatch, tmp_path):
    """`abft` replaced by a function that writes what the real commands write; the calls, as (verb, dir)."""
    calls = []
    trained_accuracy = {"abft": 0.9, "e2e": 0.95}

    def execute(cell, argv):
        verb, flags = argv[len(paper_tables.ABFT)], argv[len(paper_tables.ABFT) + 1 :]
        value = lambda flag: flags[flags.index(flag) + 1]  # noqa: E731
        if verb == "export":
            out = Path(value("--merged"))
            out.mkdir(parents=True)
            (out / "model.safetensors").write_text(Path(flags[-1]).name)  # which run it merged
            calls.append(("export", out.name))
            return
        out = Path(value("--output"))
        out.mkdir(parents=True, exist_ok=True)
        if verb == "ceiling":  # the trained model (--delta) scores higher, and more with the edit
            lift = 0.2 if "--delta" in flags else 0.0
            rows = [{"edit": e, "heads": h, "accuracy": a + lift} for e, h, a in
                    (("none", "-", 0.5), ("target", "filter", 0.6), ("target", "all", 0.7))]  # fmt: skip
            (out / "ceiling.json").write_text(json.dumps({"prompts": 128, "rows": rows}))
            calls.append((verb, out.name))
            return
        model = value("--model")
        if verb == "run":
            method = value("--method")
            config = {"seed": 0, "train": {"method": method, "recipe": "auto", "lr": 3e-4, "val_samples": 128,
                      "val_every": 4, "keep": "best", "epochs": 2}, "data": {"train_samples": 512}}  # fmt: skip
            metrics = {"before": _stage(0.6, 0.4), "after": _stage(trained_accuracy[method], 0.5)}
            curve = [{"step": s, "accuracy": a, "true_label_likelihood": 0.5, "macro_f1": f} for s, a, f in CURVE]
            metrics["validation"] = {"prompts": 128, "kept_step": 4, "best_accuracy": 0.7, "base_accuracy": 0.6,
                                     "curve": curve}  # fmt: skip
        else:  # evaluate: the base model, or a merged one (its accuracy: the trained run's)
            merged = Path(model) / "model.safetensors"
            method = merged.read_text().split("-")[-2] if merged.is_file() else None
            config = {"seed": 0, "model": {"model": model}}
            metrics = {"before": _stage(trained_accuracy[method], 0.5) if method else _stage(0.6, 0.4)}
        for name, content in (("config.json", config), ("metrics.json", metrics)):
            (out / name).write_text(json.dumps(content))
        (out / "timings.json").write_text(json.dumps({"run_seconds": 100.0}))
        (out / "status.json").write_text(json.dumps({"state": "finished"}))
        calls.append((verb, out.name))

    monkeypatch.setattr(paper_tables, "_execute", execute)
    monkeypatch.setattr(paper_tables, "OUT", tmp_path / "paper")
    monkeypatch.setattr(paper_tables, "ROOT", tmp_path)
    return calls


CURVE = [(0, 0.6, 0.4), (4, 0.7, 0.55)]  # a fake run's validation curve: step, accuracy, macro-F1


def _cell(cell_id):
    return next(c for c in paper_tables.cells() if c.id == cell_id)


def test_protocol_cells_test_the_table1_model_and_train_nothing_twice(fake_abft, tmp_path):
    runs = tmp_path / "runs"
    paper_tables.run_cell(_cell("t1-smollm2-sst2-abft-s0"), runs, commit=False)
    assert fake_abft == [("run", "t1-smollm2-sst2-abft-s0")]
    row = json.loads((tmp_path / "paper" / "t1-smollm2-sst2-abft-s0.json").read_text())
    assert row["validation_curve"] == [list(r) for r in CURVE]  # accuracy and macro-F1 per validation step
    fake_abft.clear()

    paper_tables.run_cell(_cell("t23-smollm2-sst2-abft-s0"), runs, commit=False)
    assert fake_abft == [
        ("evaluate", "t23-smollm2-sst2-base"),
        ("export", "t23-smollm2-sst2-abft-s0-model"),
        ("evaluate", "t23-smollm2-sst2-abft-s0-trained"),
    ]  # no training: the Table 1 cell's run is finished
    assert not (runs / "t23-smollm2-sst2-abft-s0-model").exists()  # the merged model is scratch
    row = json.loads((tmp_path / "paper" / "t23-smollm2-sst2-abft-s0.json").read_text())
    assert (row["before"]["accuracy"], row["after"]["accuracy"]) == (0.6, 0.9)
    assert row["after"]["template"] == {"consistency": 0.9}
    assert row["in_vs_out_of_domain"]["out_of_domain"] == {"before": 0.4, "after": 0.5, "gain": pytest.approx(0.1)}
    assert row["method"] == "abft" and row["trained_by"] == "t1-smollm2-sst2-abft-s0"
    assert row["train"]["lr"] == 3e-4 and row["wall_seconds"] == 200  # the two evaluations, not the training
    assert "abft export --merged MODEL TRAINED_RUN && abft evaluate --model MODEL" in row["command"]
    assert str(tmp_path) not in row["command"]
    fake_abft.clear()

    (runs / "t1-smollm2-sst2-e2e-s0").mkdir()  # E2E's run: begun and interrupted before it wrote its config
    paper_tables.run_cell(_cell("t23-smollm2-sst2-e2e-s0"), runs, commit=False)
    assert fake_abft == [  # trained first (not resumable yet); the base model's evaluation is shared
        ("run", "t1-smollm2-sst2-e2e-s0"),
        ("export", "t23-smollm2-sst2-e2e-s0-model"),
        ("evaluate", "t23-smollm2-sst2-e2e-s0-trained"),
    ]
    row = json.loads((tmp_path / "paper" / "t23-smollm2-sst2-e2e-s0.json").read_text())
    assert (row["method"], row["after"]["accuracy"]) == ("e2e", 0.95)


def test_an_unfinished_training_run_is_resumed(fake_abft, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    source = runs / "t1-smollm2-trec-abft-s0"
    source.mkdir(parents=True)
    (source / "config.json").write_text("{}")
    (source / "status.json").write_text(json.dumps({"state": "interrupted"}))
    resumed = []
    monkeypatch.setattr(paper_tables, "_execute", lambda cell, argv: resumed.append(argv[-2:]))
    with pytest.raises(FileNotFoundError):  # the fake resume wrote nothing; what matters is what it ran
        paper_tables.run_cell(_cell("t23-smollm2-trec-abft-s0"), runs, commit=False)
    assert resumed == [["--resume", str(source)]]


def test_a_training_run_export_refuses_is_moved_aside_and_trained_again(fake_abft, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    paper_tables.run_cell(_cell("t1-smollm2-trec-e2e-s0"), runs, commit=False)
    source = runs / "t1-smollm2-trec-e2e-s0"
    (source / "by-an-older-abft").write_text("kept")
    fake, refused = paper_tables._execute, []

    def execute(cell, argv):  # the first export refuses the run, as for one without config fingerprints
        if "export" in argv and not refused:
            refused.append(argv)
            raise paper_tables.subprocess.CalledProcessError(2, argv)
        fake(cell, argv)

    monkeypatch.setattr(paper_tables, "_execute", execute)
    fake_abft.clear()
    paper_tables.run_cell(_cell("t23-smollm2-trec-e2e-s0"), runs, commit=False)
    assert fake_abft[1:3] == [("run", "t1-smollm2-trec-e2e-s0"), ("export", "t23-smollm2-trec-e2e-s0-model")]
    aside = [p for p in runs.iterdir() if p.name.startswith("t1-smollm2-trec-e2e-s0.refused-")]
    assert len(aside) == 1 and (aside[0] / "by-an-older-abft").read_text() == "kept"  # moved, not deleted
    assert json.loads((tmp_path / "paper" / "t23-smollm2-trec-e2e-s0.json").read_text())["after"]["accuracy"] == 0.95


def test_ceiling_cells_score_the_table1_abft_run_and_resume_by_part(fake_abft, tmp_path):
    runs = tmp_path / "runs"
    paper_tables.run_cell(_cell("t1-smollm2-trec-abft-s0"), runs, commit=False)
    fake_abft.clear()
    (runs / "ceil-smollm2-trec-abft-s0-trained").mkdir()  # begun and interrupted: no ceiling.json yet
    paper_tables.run_cell(_cell("ceil-smollm2-trec-abft-s0"), runs, commit=False)
    assert fake_abft == [
        ("ceiling", "ceil-smollm2-trec-abft-s0-base"),
        ("ceiling", "ceil-smollm2-trec-abft-s0-trained"),
    ]
    row = json.loads((tmp_path / "paper" / "ceil-smollm2-trec-abft-s0.json").read_text())
    assert [r["accuracy"] for r in row["base"]] == [0.5, 0.6, 0.7]
    assert [r["accuracy"] for r in row["trained"]] == pytest.approx([0.7, 0.8, 0.9])
    assert row["prompts"] == 128 and row["trained_by"] == "t1-smollm2-trec-abft-s0"
    assert "abft ceiling --delta TRAINED_RUN --samples 128" in row["command"] and str(tmp_path) not in row["command"]

    fake_abft.clear()  # a part whose ceiling.json exists is not run again
    (tmp_path / "paper" / "ceil-smollm2-trec-abft-s0.json").unlink()
    (runs / "ceil-smollm2-trec-abft-s0-trained" / "ceiling.json").unlink()
    paper_tables.run_cell(_cell("ceil-smollm2-trec-abft-s0"), runs, commit=False)
    assert fake_abft == [("ceiling", "ceil-smollm2-trec-abft-s0-trained")]


def test_ceilings_follow_the_runs_they_read():
    ids = [c.id for c in paper_tables.cells()]
    for dataset in paper_tables.PAPER_DATASETS:
        assert ids.index(f"t1-smollm2-{dataset}-abft-s0") < ids.index(f"ceil-smollm2-{dataset}-abft-s0")
    for dataset in paper_tables.PAPER_DATASETS[4:]:  # on the disk that trained it: no training run twice
        assert ids.index(f"ceil-smollm2-{dataset}-abft-s0") == ids.index(f"t1-smollm2-{dataset}-abft-s0") + 1


def test_every_cell_command_is_one_the_cli_accepts(tmp_path):
    from abft.cli import build_parser

    parser = build_parser()
    commands = []
    for cell in paper_tables.cells():
        if cell.verb == "ceiling":
            commands += paper_tables.ceiling_commands(cell, tmp_path).values()
        else:
            commands.append(cell.command(tmp_path / "run", model=str(tmp_path / "merged") if cell.trained else None))
    assert {argv[len(paper_tables.ABFT)] for argv in commands} == {"run", "evaluate", "ceiling"}
    for argv in commands:  # argparse exits on a flag the command does not take
        assert parser.parse_args(argv[len(paper_tables.ABFT) :]).command == argv[len(paper_tables.ABFT)]


@pytest.mark.parametrize("status", [2, 1])
def test_a_run_ceiling_refuses_is_trained_again_and_a_crash_is_not(fake_abft, tmp_path, monkeypatch, status):
    runs = tmp_path / "runs"
    paper_tables.run_cell(_cell("t1-smollm2-sst2-abft-s0"), runs, commit=False)
    fake, refused = paper_tables._execute, []

    def execute(cell, argv):  # the first ceiling --delta fails: refused (2), as a run without fingerprints, or 1
        if "--delta" in argv and not refused:
            refused.append(argv)
            raise paper_tables.subprocess.CalledProcessError(status, argv)
        fake(cell, argv)

    monkeypatch.setattr(paper_tables, "_execute", execute)
    fake_abft.clear()
    if status == 1:  # a crash is the cell's failure (logged by main); the run stays where it is
        with pytest.raises(paper_tables.subprocess.CalledProcessError):
            paper_tables.run_cell(_cell("ceil-smollm2-sst2-abft-s0"), runs, commit=False)
        assert sorted(p.name for p in runs.iterdir())[-1] == "t1-smollm2-sst2-abft-s0"
        return
    paper_tables.run_cell(_cell("ceil-smollm2-sst2-abft-s0"), runs, commit=False)
    assert fake_abft == [
        ("ceiling", "ceil-smollm2-sst2-abft-s0-base"),
        ("run", "t1-smollm2-sst2-abft-s0"),
        ("ceiling", "ceil-smollm2-sst2-abft-s0-trained"),
    ]
    assert any(p.name.startswith("t1-smollm2-sst2-abft-s0.refused-") for p in runs.iterdir())


def test_a_cell_keeps_each_prompts_correctness_when_its_run_logged_it(fake_abft, tmp_path):
    runs = tmp_path / "runs"
    cell = _cell("t1-smollm2-sst2-abft-s0")
    paper_tables.run_cell(cell, runs, commit=False)
    assert "correct" not in json.loads((tmp_path / "paper" / f"{cell.id}.json").read_text())["after"]  # none logged
    run_dir = runs / cell.id
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["after"] |= {"accuracy": 0.75, "prompts": 4}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))

    def after(records):
        (run_dir / "predictions_after.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        return paper_tables.summarize(cell, run_dir, "abft run", 1.0)["after"].get("correct")

    right = [True, True, False, True]
    assert after([{"index": i, "correct": c} for i, c in enumerate(right)]) == "1101"
    assert after([{"index": i, "correct": c} for i, c in enumerate(right[::-1])]) == "1011"
    assert after([{"index": i, "correct": c} for i, c in enumerate([True] * 4)]) is None  # not the run's accuracy
    assert after([{"index": i, "correct": c} for i, c in enumerate(right[:3])]) is None  # not its prompts
    assert after([{"index": 3 - i, "correct": c} for i, c in enumerate(right)]) is None  # not in prompt order
    assert after([{"index": i, "correct": int(c)} for i, c in enumerate(right)]) is None  # not a boolean
    (run_dir / "predictions_after.jsonl").write_text("[[[[")
    assert paper_tables.summarize(cell, run_dir, "abft run", 1.0)["after"].get("correct") is None
