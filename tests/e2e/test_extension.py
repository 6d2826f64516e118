"""Extending abft from outside its sources: a new training objective and a new evaluation protocol, each
registered from this file and run through `abft run` (end to end on a tiny model)."""

import json

import pytest
import torch

from abft.cli import main
from abft.evaluation import suites
from abft.objectives import OBJECTIVES, ABFTObjective, ObjectiveInputs, ObjectiveOutput, register

SMALL = ["--k", "2", "--train-samples", "4", "--pseudo-batch-size", "2", "--epochs", "1", "--test-samples", "4"]
SMALL += ["--eval-batch-size", "4", "--lr", "1e-2", "--val-samples", "0", "--keep", "last", "--no-fore-test"]


class LastLabel:
    """Toy objective: pull every head's last-row attention onto the last demonstration label token."""

    calls = 0

    def __init__(self, cfg, prefix_tokens: int, label_ids: torch.Tensor):
        self.filter = ABFTObjective.from_config(cfg, prefix_tokens)

    def __call__(self, step: ObjectiveInputs) -> ObjectiveOutput:
        LastLabel.calls += 1
        b = step.batch
        last = b.label_positions[:, -1]  # (B,)
        index = last[:, None, None, None].expand(*step.probs.shape[:3], 1)
        mass = step.probs.gather(-1, index)[..., 0]  # (B, L, H)
        heads = torch.ones_like(mass, dtype=torch.bool)
        return ObjectiveOutput((1 - mass).sum((1, 2)), heads, {"toy_calls": float(len(last))})


@pytest.fixture
def toy_objective(monkeypatch):
    monkeypatch.setitem(OBJECTIVES, "last_label", None)  # removed again after the test
    register("last_label", "attention on the last demonstration label")(LastLabel)
    LastLabel.calls = 0


def test_a_registered_objective_trains_through_abft_run(patch_runner, toy_objective, tmp_path):
    loads = patch_runner()
    out = tmp_path / "run"
    assert main(["run", *SMALL, "--method", "last_label", "--output", str(out)]) == 0
    assert LastLabel.calls == 2  # two steps of one micro-batch
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["toy_calls"] for r in log] == [1.0, 1.0]  # counts are logged per example
    assert json.loads((out / "config.json").read_text())["train"]["method"] == "last_label"
    assert (out / "delta.safetensors").is_file() and len(loads) == 1


def test_a_registered_protocol_runs_at_each_stage(patch_runner, monkeypatch, tmp_path, capsys):
    patch_runner()

    def prompt_count(model, tokenizer, dataset, cfg, *, cache, sets):
        return {"prompts": len(sets["normal"].prompts)}

    toy = suites.Suite(
        lambda prompt_sets, dataset: {"normal": prompt_sets.normal(dataset)},
        prompt_count,
        lambda cfg: True,
        lambda r: f"toy protocol saw {r['prompts']} prompts",
    )
    monkeypatch.setitem(suites.SUITES, "toy", toy)
    out = tmp_path / "eval"
    assert main(["evaluate", "--k", "2", "--test-samples", "4", "--output", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["before"]["toy"] == {"prompts": 4}
    assert "toy protocol saw 4 prompts" in capsys.readouterr().out
