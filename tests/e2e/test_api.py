"""The public Python API (abft.api): the README's example, the model handed back as it came in, save / load,
and the per-prompt outputs of a run (predictions_before / predictions_after.jsonl)."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_llama
from tiny_tokenizer import word_tokenizer
from toy_dataset import toy

import abft
from abft.cli import main
from abft.errors import UserError

README = Path(__file__).parents[2] / "README.md"
LOAD_LINE = 'model, tokenizer = load_model("smollm2-135m")'
WORDS = ("negative", "positive")


def _readme_example() -> str:
    """The README's python block after the api-example marker."""
    text = README.read_text()
    assert "<!-- api-example" in text
    return text.split("<!-- api-example", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_example_runs(tmp_path, monkeypatch):
    code = _readme_example()
    assert code.count(LOAD_LINE) == 1  # the one line replaced: a tiny model instead of the embedded one
    code = code.replace(LOAD_LINE, "model, tokenizer = _tiny()")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ABFT_NO_PROGRESS", "1")
    scope = {"_tiny": lambda: (tiny_llama(max_position_embeddings=512), word_tokenizer())}
    exec(compile(code, str(README), "exec"), scope)
    after = scope["after"]
    assert len(after["predictions"]) == 2 and all("flipped" in p for p in after["predictions"])
    assert (tmp_path / "abft-out" / "delta.safetensors").is_file()


def test_import_abft_is_cheap_and_lazy():
    code = "import sys, abft; assert 'torch' not in sys.modules and 'abft.api' not in sys.modules; abft.fit"
    env = {**os.environ, "PYTHONPATH": str(Path(abft.__file__).parents[1])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    assert {"prompts", "fit", "evaluate", "save", "load"} <= set(dir(abft))


def _examples(n=12, seed=0):
    ds = toy(words=WORDS, n_cal=n, n_demo=8, n_test=6, seed=seed)
    pick = lambda split: [ds.rows[i] for i in split]  # noqa: E731
    return pick(ds.calibration), pick(ds.demonstration), pick(ds.test)


def test_fit_gives_the_model_back_as_it_came(tmp_path):
    tok = word_tokenizer()
    model = tiny_llama(attn_implementation="eager", max_position_embeddings=512)
    model.train()
    model.lm_head.requires_grad_(False)  # a caller's own mix of flags and modes
    model.model.layers[0].eval()
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    modes = {name: m.training for name, m in model.named_modules()}
    train, demos, test = _examples()
    records = abft.fit(model, tok, abft.prompts(tok, train, WORDS, k=2), lr=1e-2, epochs=1, pseudo_batch_size=6)
    assert len(records) == 2
    assert model.config._attn_implementation == "eager"
    assert flags == {name: p.requires_grad for name, p in model.named_parameters()}
    assert modes == {name: m.training for name, m in model.named_modules()}
    prompts = abft.prompts(tok, test, WORDS, k=2, demonstrations=demos)
    out = model(input_ids=torch.tensor([prompts[0].input_ids]), output_attentions=True)
    assert len(out.attentions) == 2 and out.attentions[0].shape[-1] == len(prompts[0].input_ids)


def test_fit_restores_the_model_after_an_error():
    tok = word_tokenizer()
    model = tiny_llama(attn_implementation="eager")
    train, _, _ = _examples()
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(UserError, match="unknown training setting"):
        abft.fit(model, tok, abft.prompts(tok, train, WORDS, k=2), learning_rate=1e-3)
    with pytest.raises(UserError):
        abft.fit(model, tok, abft.prompts(tok, train, WORDS, k=2), lr=-1.0)
    assert model.config._attn_implementation == "eager" and not model.training
    assert flags == [p.requires_grad for p in model.parameters()]


def test_prompts_from_mappings_and_their_errors():
    tok = word_tokenizer()
    rows = [{"text": f"w{i} w{i + 1}", "label": WORDS[i % 2]} for i in range(6)]
    train = abft.prompts(tok, rows, WORDS, k=2, n=9, seed=1)
    assert len(train) == 9 and train.label_words == WORDS and all(len(p.demo_labels) == 2 for p in train)
    test = abft.prompts(tok, rows[:2], WORDS, k=3, demonstrations=rows[2:])
    assert [p.gold for p in test] == [0, 1]
    for bad, match in [
        ([("w1", "maybe")], "label 'maybe'"),
        ([{"sentence": "w1", "label": 0}], "no 'text' key"),
        (["w1"], "give \\(text, label\\) pairs"),
    ]:
        with pytest.raises(UserError, match=match):
            abft.prompts(tok, bad, WORDS, k=0)
    with pytest.raises(UserError, match="k=3"):
        abft.prompts(tok, rows[:3], WORDS, k=3)
    with pytest.raises(UserError, match="abft.prompts"):
        abft.evaluate(tiny_llama(), tok, list(test))


def test_save_creates_the_directory_with_the_umask_mode_and_load_round_trips(tmp_path):
    tok = word_tokenizer()
    model = tiny_llama()
    train, demos, test = _examples()
    abft.fit(model, tok, abft.prompts(tok, train, WORDS, k=2), lr=1e-2, epochs=1, pseudo_batch_size=6)
    target = tmp_path / "not" / "yet"
    path = abft.save(model, target, meta={"model": "tiny"})
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    prompts = abft.prompts(tok, test, WORDS, k=2, demonstrations=demos)
    fresh = abft.load(tiny_llama(), target)
    assert abft.evaluate(fresh, tok, prompts)["predictions"] == abft.evaluate(model, tok, prompts)["predictions"]
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="cannot save the trained weights"):
        abft.save(model, tmp_path / "file" / "below")


def test_run_writes_per_prompt_predictions(patch_runner, tmp_path):
    patch_runner()
    out = tmp_path / "run"
    args = ["--k", "2", "--test-samples", "12", "--eval-batch-size", "4", "--pseudo-batch-size", "4"]
    assert main(["run", *args, "--epochs", "1", "--lr", "1e-2", "--no-save", "--output", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    stages = {}
    for stage in ("before", "after"):
        lines = [json.loads(line) for line in (out / f"predictions_{stage}.jsonl").read_text().splitlines()]
        assert len(lines) == metrics[stage]["prompts"] == 12
        assert [r["index"] for r in lines] == list(range(12))
        assert sum(r["correct"] for r in lines) / len(lines) == pytest.approx(metrics[stage]["accuracy"])
        assert all(r["prediction"] == max(range(3), key=r["probs"].__getitem__) for r in lines)
        stages[stage] = lines
    assert "flipped" not in stages["before"][0]
    for b, a in zip(stages["before"], stages["after"], strict=True):
        assert a["gold"] == b["gold"] and a["flipped"] == (a["prediction"] != b["prediction"])
    change = metrics["change"]  # the paired change, counted from the two files
    right = [(b["correct"], a["correct"]) for b, a in zip(stages["before"], stages["after"], strict=True)]
    assert change["improved"] == sum(a and not b for b, a in right)
    assert change["worsened"] == sum(b and not a for b, a in right)
    assert change["accuracy"] == pytest.approx(metrics["accuracy_gain"])


def test_paired_change_standard_error():
    """The paired s.e. is numpy's sd(d, ddof=1) / sqrt(n) over per-prompt differences; below the
    independent-samples error when the stages agree; None for records that are not predictions."""
    import numpy as np

    from abft.evaluation.predictions import paired_change

    before = [True] * 50 + [False] * 40 + [True] * 4 + [False] * 6
    after = [True] * 50 + [False] * 40 + [False] * 4 + [True] * 6
    records = lambda xs: [{"correct": x} for x in xs]  # noqa: E731
    change = paired_change(records(before), records(after))
    d = np.array(after, float) - np.array(before, float)
    assert change["accuracy"] == pytest.approx(d.mean()) and (change["improved"], change["worsened"]) == (6, 4)
    assert change["se"] == pytest.approx(d.std(ddof=1) / np.sqrt(len(d)))
    independent = np.hypot(*(np.sqrt(p * (1 - p) / 100) for p in (np.mean(before), np.mean(after))))
    assert change["se"] < independent / 2
    assert paired_change(records(before), records(after[:-1])) is None
    assert paired_change(records(before), [{"correct": 1}] * 100) is None  # an edited file: not a boolean
