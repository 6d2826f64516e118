"""Recipes (abft.recipe) and validation during training (abft.validation): the choices, best-step selection,
explicit flags winning, resume keeping the best step, and validation prompts apart from training and test."""

import json

import pytest
import torch
from fake_prompts import LABEL_TOKENS, fake_prompts
from tiny_models import tiny_llama

from abft import data as D
from abft.cli import main
from abft.config import TrainConfig
from abft.models.arch import find_qk_slices
from abft.models.weights import trained_tensors
from abft.recipe import PAPER_LORA_LR, PAPER_LR, RELATIVE_LR, qk_rms, resolve
from abft.train import train
from abft.validation import ValidationMonitor

CFG = dict(lr=1e-2, pseudo_batch_size=4, micro_batch_size=2, epochs=2, head_filter=False)


def _tensors(model):
    return {k: v.clone() for k, v in trained_tensors(model, find_qk_slices(model)).items()}


def _scripted(accuracies, f1s=None):
    """A score function that returns the next scripted accuracy (and macro-F1) on each call (step 0 first)."""
    calls = iter(zip(accuracies, f1s or [0.5] * len(accuracies), strict=True))

    def score(model):
        accuracy, f1 = next(calls)
        return {"accuracy": accuracy, "true_label_likelihood": 0.5, "macro_f1": f1}

    return score


# ------------------------------------------------------------------------------------------------ recipes
def test_paper_recipe_is_the_papers_settings():
    cfg = TrainConfig(recipe="paper")
    choices = resolve(cfg, tiny_llama())
    assert (cfg.lr, cfg.val_samples, cfg.keep) == (PAPER_LR, 0, "last") == (2e-5, 0, "last")
    assert (cfg.epochs, cfg.pseudo_batch_size, cfg.adaptive_penalty, cfg.penalty, cfg.reward) == (2, 32, "pid", 0.5, 1)
    assert choices == {"recipe": "paper", "lr": 2e-5, "val_samples": 0, "keep": "last"}
    lora = TrainConfig(recipe="paper", lora_r=4)
    resolve(lora, tiny_llama())
    assert lora.lr == PAPER_LORA_LR


def test_auto_lr_follows_the_scale_of_wq_wk():
    model = tiny_llama()
    cfg = TrainConfig()
    choices = resolve(cfg, model)
    rms = qk_rms(model)
    assert cfg.lr == pytest.approx(RELATIVE_LR * rms, rel=0.05) and cfg.keep == "best" and cfg.val_samples == 128
    assert "lr_rule" in choices
    with torch.no_grad():
        for s in find_qk_slices(model):
            model.get_parameter(s.param).mul_(10)
    scaled = TrainConfig()
    resolve(scaled, model)
    assert qk_rms(model) == pytest.approx(10 * rms, rel=1e-5)
    assert scaled.lr == pytest.approx(10 * cfg.lr, rel=0.1)  # 2 significant digits on each side
    embedded = RELATIVE_LR * 0.207  # SmolLM2-135M's RMS: the lr chosen on its validation prompts
    assert float(f"{embedded:.2g}") == 3e-4


def test_explicit_settings_win_over_the_recipe():
    cfg = TrainConfig(lr=1e-3, val_samples=0, keep="last")
    assert resolve(cfg, tiny_llama()) == {"recipe": "auto"}
    assert (cfg.lr, cfg.val_samples, cfg.keep) == (1e-3, 0, "last")
    paper = TrainConfig(recipe="paper", val_samples=16)
    resolve(paper, tiny_llama())
    assert paper.val_samples == 16 and paper.keep == "last" and paper.lr == 2e-5


def test_keep_best_without_validation_is_refused():
    from abft.errors import UserError

    for keep in ("best", "best-f1"):
        with pytest.raises(UserError, match=f"keep={keep} needs validation"):
            TrainConfig(val_samples=0, keep=keep).validate()


def test_keep_best_under_the_paper_recipe_is_refused_before_the_model_loads(patch_runner, tmp_path, capsys):
    loads = patch_runner()  # --recipe paper scores no validation prompts, so an explicit --keep best cannot be kept
    out = tmp_path / "run"
    assert main(["run", "--recipe", "paper", "--keep", "best-f1", "--output", str(out)]) == 2
    assert "--keep best-f1 needs validation prompts" in capsys.readouterr().err
    assert loads == [] and not out.exists()
    small = ["--test-samples", "8", "--train-samples", "8", "--pseudo-batch-size", "4", "--epochs", "1"]
    assert main(["run", "--recipe", "paper", "--keep", "best", "--val-samples", "6", *small, "--output", str(out)]) == 0


# ------------------------------------------------------------------------------------ best-step selection
def test_best_step_weights_are_kept_on_a_scripted_curve():
    prompts = fake_prompts(8, k=3)
    # steps 0..4 (every step; 2 epochs x 2 steps = 4 steps): the best is step 2, a later tie does not replace it
    accuracies = [0.5, 0.6, 0.9, 0.9, 0.7]
    snapshots = {}
    model = tiny_llama()
    snapshots[0] = _tensors(model)
    monitor = ValidationMonitor(_scripted(accuracies), every=1, keep="best")
    records = train(
        model,
        prompts,
        TrainConfig(**CFG),
        0,
        LABEL_TOKENS,
        on_step=lambda r: snapshots.__setitem__(r.step, _tensors(model)),
        monitor=monitor,
    )
    summary = monitor.summary()
    assert summary["kept_step"] == summary["best_step"] == 2 and summary["best_accuracy"] == 0.9
    assert summary["base_accuracy"] == 0.5 and [r["step"] for r in summary["curve"]] == [0, 1, 2, 3, 4]
    assert [r.extra["val_accuracy"] for r in records] == accuracies[1:]
    final = _tensors(model)
    assert all(torch.equal(final[k], snapshots[2][k]) for k in final)
    assert any(not torch.equal(final[k], snapshots[4][k]) for k in final)


def test_step_zero_can_be_kept_and_keep_last_keeps_the_last():
    prompts = fake_prompts(8, k=3)
    model = tiny_llama()
    base = _tensors(model)
    monitor = ValidationMonitor(_scripted([0.8, 0.5, 0.6]), every=2, keep="best")
    train(model, prompts, TrainConfig(**CFG), 0, LABEL_TOKENS, monitor=monitor)
    assert monitor.summary()["kept_step"] == 0 and [r["step"] for r in monitor.summary()["curve"]] == [0, 2, 4]
    assert all(torch.equal(t, base[k]) for k, t in _tensors(model).items())

    last = tiny_llama()
    plain = tiny_llama()
    monitor = ValidationMonitor(_scripted([0.8, 0.5, 0.6]), every=2, keep="last")
    train(last, prompts, TrainConfig(**CFG), 0, LABEL_TOKENS, monitor=monitor)
    train(plain, prompts, TrainConfig(**CFG), 0, LABEL_TOKENS)
    assert monitor.summary()["kept_step"] == 4
    a, b = _tensors(last), _tensors(plain)
    assert all(torch.equal(a[k], b[k]) for k in a)  # validation itself changes nothing


def test_keep_best_f1_keeps_the_step_of_highest_macro_f1():
    # accuracy peaks at step 2 (the model leaning onto the majority label), macro-F1 at step 1; ties in F1 go
    # to the higher accuracy (steps 3 and 4: 0.7 > 0.6)
    accuracies, f1s = [0.5, 0.6, 0.9, 0.6, 0.7], [0.4, 0.7, 0.3, 0.6, 0.6]
    kept = {}
    for keep, f1 in (("best", f1s), ("best-f1", f1s), ("best-f1", [0.4, 0.5, 0.3, 0.6, 0.6])):
        model = tiny_llama()
        snapshots = {0: _tensors(model)}

        def snapshot(record, model=model, snapshots=snapshots):
            snapshots[record.step] = _tensors(model)

        monitor = ValidationMonitor(_scripted(accuracies, f1), every=1, keep=keep)
        records = train(model, fake_prompts(8, k=3), TrainConfig(**CFG), 0, LABEL_TOKENS, on_step=snapshot,
                        monitor=monitor)  # fmt: skip
        summary = monitor.summary()
        step = summary["kept_step"]
        final = _tensors(model)
        assert all(torch.equal(final[k], snapshots[step][k]) for k in final)
        assert summary["best_accuracy"] == accuracies[step] and summary["best_macro_f1"] == f1[step]
        assert [r["macro_f1"] for r in summary["curve"]] == f1 and [r.extra["val_macro_f1"] for r in records] == f1[1:]
        kept.setdefault(keep, []).append(step)
    assert kept == {"best": [2], "best-f1": [1, 4]}


def test_resume_keeps_the_best_step(tmp_path):
    prompts = fake_prompts(8, k=3)
    accuracies = [0.5, 0.9, 0.6, 0.7, 0.8]
    reference = tiny_llama()
    ref_monitor = ValidationMonitor(_scripted(accuracies), every=1, keep="best")
    train(reference, prompts, TrainConfig(**CFG), 0, LABEL_TOKENS, monitor=ref_monitor)

    class Stop(Exception):
        pass

    def stop_after_2(record):
        if record.step == 2:
            raise Stop

    model = tiny_llama()
    with pytest.raises(Stop):
        train(
            model,
            prompts,
            TrainConfig(**CFG),
            0,
            LABEL_TOKENS,
            on_step=stop_after_2,
            checkpoint_dir=tmp_path,
            monitor=ValidationMonitor(_scripted(accuracies), every=1, keep="best"),
        )
    resumed = tiny_llama()  # a fresh process: weights from the checkpoint, scores continue at step 3
    monitor = ValidationMonitor(_scripted(accuracies[3:]), every=1, keep="best")
    train(resumed, prompts, TrainConfig(**CFG), 0, LABEL_TOKENS, checkpoint_dir=tmp_path, monitor=monitor)
    assert monitor.summary() == ref_monitor.summary() and monitor.summary()["kept_step"] == 1
    a, b = _tensors(resumed), _tensors(reference)
    assert all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------------------- validation prompts
def test_validation_prompts_are_apart_from_training_and_test_prompts():
    ds = D.load_dataset("sst2")
    val = D.validation_pairs(ds, 4, 256)
    train_q = {q for _, q in D.train_pairs(ds, 4, 512, seed=0)}
    test_q = {q for _, q in D.test_pairs(ds, 4, 1024)}
    val_q = {q for _, q in val}
    assert not val_q & train_q and not val_q & test_q
    text = [t for t, _ in ds.rows]  # the same sentence under another index would leak too
    assert not {text[q] for q in val_q} & {text[q] for q in test_q | train_q}


@pytest.mark.parametrize(("method", "keep"), [("abft", None), ("e2e", "best-f1")])
def test_run_records_the_recipe_and_the_validation_curve(patch_runner, tmp_path, capsys, method, keep):
    patch_runner()  # the toy dataset stands for a user's: its own demonstration split gives the validation prompts
    out = tmp_path / "run"
    args = ["run", "--method", method, "--k", "2", "--train-samples", "8", "--pseudo-batch-size", "4", "--epochs", "1"]
    args += ["--keep", keep] if keep else []
    assert main([*args, "--test-samples", "8", "--val-samples", "6", "--val-every", "1", "--output", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert config["train"]["recipe"] == "auto" and config["train"]["keep"] == metrics["validation"]["keep"] == (
        keep or "best"
    )
    assert config["train"]["lr"] == config["recipe_choices"]["lr"] > 0 and "val_samples" not in config["recipe_choices"]
    assert metrics["validation"]["prompts"] == 6 and [r["step"] for r in metrics["validation"]["curve"]] == [0, 1, 2]
    assert all(0 <= r["macro_f1"] <= 1 for r in metrics["validation"]["curve"])
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert all("val_accuracy" in r and "val_macro_f1" in r for r in log)
    printed = capsys.readouterr().out
    assert "recipe auto: lr" in printed and f"--lr {config['train']['lr']:g} --val-samples 6" in printed
    assert ("keep the step of best macro-F1" if keep else "keep the best step") in printed
    assert "95% interval" in printed and "change" in printed and "fewer than StaICC's 1024" in printed


def test_a_tampered_validation_state_is_refused_on_resume(tmp_path):
    from abft.checkpoint import FILE, load_checkpoint
    from abft.errors import UserError

    prompts = fake_prompts(8, k=3)

    class Stop(Exception):
        pass

    def stop(record):
        raise Stop

    monitor = ValidationMonitor(_scripted([0.5, 0.9]), every=1, keep="best")
    with pytest.raises(Stop):
        train(tiny_llama(), prompts, TrainConfig(**CFG), 0, LABEL_TOKENS, on_step=stop, checkpoint_dir=tmp_path,
              monitor=monitor)  # fmt: skip
    state = load_checkpoint(tmp_path)
    tampered = {
        "shape": {**state["monitor"], "best_params": [torch.zeros(1)] * len(state["monitor"]["best_params"])},
        "step": {**state["monitor"], "best_step": 7},
        "curve": {**state["monitor"], "curve": [[0, float("nan"), 0.5, 0.5]]},
        "older": {**state["monitor"], "curve": [row[:3] for row in state["monitor"]["curve"]]},  # no macro-F1
    }
    for bad in tampered.values():
        torch.save({**state, "monitor": bad}, tmp_path / FILE)
        with pytest.raises(UserError, match="does not belong to this run"):
            train(tiny_llama(), prompts, TrainConfig(**CFG), 0, LABEL_TOKENS, checkpoint_dir=tmp_path,
                  monitor=ValidationMonitor(_scripted([0.5] * 9), every=1, keep="best"))  # fmt: skip
