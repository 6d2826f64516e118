"""The --calibration protocol (abft.evaluation.protocols.calibration): every StaICC calibration baseline on
the same test prompts, each checked against calibrate(name, ...) on inputs computed here with a plain
``model(..., output_hidden_states=True)`` forward per prompt (a tiny random Llama), not abft's scorer.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny_models import tiny_llama
from toy_dataset import toy

from abft.cli import build_parser, main
from abft.cli.flags import config_from_args
from abft.config import RunConfig
from abft.configcheck import checked_config
from abft.errors import UserError
from abft.evaluation import protocols, suites
from abft.evaluation.calibration import CONTENT_FREE_INPUTS, calibrate_contextual
from abft.evaluation.calibration_methods import CALIBRATIONS, calibrate
from abft.evaluation.prompt_sets import (
    CALIBRATION_PROMPTS,
    DOMAIN_CALIBRATION_WORDS,
    PromptSets,
    calibration_pairs,
    calibration_sets,
)
from abft.evaluation.protocols import prompt_metrics

ALL = tuple(CALIBRATIONS)


def make_cfg(methods=ALL, k=2, n=24) -> RunConfig:
    cfg = RunConfig()
    cfg.data.k, cfg.data.test_samples = k, n
    cfg.eval.eval_batch_size, cfg.eval.calibration = 8, tuple(methods)
    return cfg


def forward(model, prompts, label_ids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probs (N, C), last-layer last-token hidden (N, D), full logits (N, V)): one unpadded forward per prompt."""
    probs, hidden, logits = [], [], []
    with torch.no_grad():
        for p in prompts:
            out = model(input_ids=torch.tensor([p.input_ids]), output_hidden_states=True)
            z = out.logits[0, -1].double()
            probs.append(torch.softmax(z[list(label_ids)], -1).numpy())
            hidden.append(out.hidden_states[-1][0, -1].double().numpy())
            logits.append(z.numpy())
    return np.array(probs), np.array(hidden), np.array(logits)


def assert_metrics(got: dict, expected: dict, what: str) -> None:
    assert got is not None, what
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), f"{what}: {key}"


# ------------------------------------------------------------------------------------------------- the CLI
def parse(*flags: str):
    return config_from_args(build_parser().parse_args(["evaluate", *flags])).eval.calibration


def test_the_flag_takes_method_names_and_a_bare_flag_is_all_of_them():
    assert parse() == ()  # off
    assert parse("--calibration") == ALL == ("contextual", "domain", "batch", "hidden", "knn")
    assert parse("--calibration", "knn", "batch") == ("knn", "batch")
    assert parse("--calibration", "contextual", "--k", "2") == ("contextual",)
    with pytest.raises(SystemExit):
        parse("--calibration", "platt")
    assert suites.selected(make_cfg(())) == ["normal"] and "calibration" in suites.selected(make_cfg(("batch",)))


def test_config_json_round_trips_and_old_booleans_still_read():
    cfg = make_cfg(("hidden", "knn"))
    data = json.loads(cfg.to_json())
    assert data["eval"]["calibration"] == ["hidden", "knn"]
    assert checked_config(data).eval.calibration == ("hidden", "knn")

    def with_calibration(value) -> dict:
        return {**data, "eval": {**data["eval"], "calibration": value}}

    assert checked_config(with_calibration([])).eval.calibration == ()
    assert checked_config(with_calibration(True)).eval.calibration == ("contextual",)  # was a switch
    assert checked_config(with_calibration(False)).eval.calibration == ()
    for bad in (["platt"], "knn", 3):
        with pytest.raises(UserError, match="eval.calibration"):
            checked_config(with_calibration(bad))


# ---------------------------------------------------------------------------------------- the prompts
def test_extra_prompts_come_only_from_the_demonstration_split(tok):
    ds = toy(n_demo=60)
    sets = calibration_sets(PromptSets(tok, make_cfg(k=3)), ds)
    pairs = calibration_pairs(ds, 3)
    demo = set(ds.demonstration)
    assert len(pairs) == CALIBRATION_PROMPTS
    for demos, query in pairs:
        assert query in demo and set(demos) <= demo and query not in demos and len(set(demos)) == 3
    builder = sets["normal"].builder
    anchors = sets["anchors"].prompts
    assert [p.text for p in anchors] == [p.text for p in builder.build_pairs(ds, pairs)]
    assert [p.gold for p in anchors] == [ds.rows[q][1] for _, q in pairs]
    words = {w for i in ds.demonstration for w in ds.rows[i][0].split(" ")}
    for p, (demos, _) in zip(sets["domain"].prompts, pairs, strict=True):
        query = p.text.rsplit("sentence: ", 1)[1].removesuffix(" sentiment:").split(" ")
        assert len(query) == DOMAIN_CALIBRATION_WORDS and set(query) <= words
        assert p.text == builder.render([ds.rows[i] for i in demos], (" ".join(query), 0))[0]
    # the test split does not change them
    other = toy(n_demo=60)
    other.rows[other.test[0] :] = [("w1 w2", 0)] * len(other.test)
    again = calibration_sets(PromptSets(tok, make_cfg(k=3)), other)
    for key in ("anchors", "domain"):
        assert [p.text for p in again[key].prompts] == [p.text for p in sets[key].prompts], key


def test_only_the_selected_methods_build_prompts(tok):
    ds = toy()
    assert set(calibration_sets(PromptSets(tok, make_cfg(("batch",))), ds)) == {"normal"}
    assert set(calibration_sets(PromptSets(tok, make_cfg(("knn",))), ds)) == {"normal", "anchors"}
    assert set(calibration_sets(PromptSets(tok, make_cfg(("domain",))), ds)) == {"normal", "domain"}


# ----------------------------------------------------------------------------------------- the numbers
def test_each_method_equals_calibrate_on_independently_computed_inputs(tok, model):
    ds = toy()
    cfg = make_cfg()
    res = protocols.calibration(model, tok, ds, cfg)
    sets = calibration_sets(PromptSets(tok, cfg), ds)
    normal, ids = sets["normal"].prompts, sets["normal"].builder.label_token_ids
    probs, hidden, logits = forward(model, normal, ids)
    cf = np.stack([forward(model, sets[f"content-free {t!r}"].prompts, ids)[0] for t in CONTENT_FREE_INPUTS], 1)
    domain = forward(model, sets["domain"].prompts, ids)[0]
    _, anchor_hidden, anchor_logits = forward(model, sets["anchors"].prompts, ids)
    labels = np.array([p.gold for p in sets["anchors"].prompts])
    inputs = {
        "contextual": {"content_free_probs": cf},
        "domain": {"content_free_probs": domain},
        "batch": {},
        "hidden": {"hidden": hidden, "anchor_hidden": anchor_hidden, "anchor_labels": labels},
        "knn": {"logits": logits, "anchor_logits": anchor_logits, "anchor_labels": labels},
    }
    assert list(res) == ["uncalibrated", *ALL, "setup"]
    assert_metrics(res["uncalibrated"], prompt_metrics(probs, normal, 3), "uncalibrated")
    for name, kwargs in inputs.items():
        assert_metrics(res[name], prompt_metrics(calibrate(name, probs, **kwargs), normal, 3), name)
    assert len({res[name]["true_label_likelihood"] for name in ALL}) == len(ALL)  # five different answers
    setup = res["setup"]
    assert setup["knn"]["anchors"] == setup["hidden"]["anchors"] == CALIBRATION_PROMPTS
    assert setup["hidden"]["anchor_label_counts"] == np.bincount(labels, minlength=3).tolist()
    assert setup["domain"]["prompts"] == CALIBRATION_PROMPTS and setup["batch"]["batch_size"] == 128
    assert setup["contextual"]["content_free_distribution"] == pytest.approx(cf.mean(axis=(0, 1)).tolist())


def test_contextual_numbers_do_not_depend_on_the_other_methods(tok, model):
    ds = toy()
    alone = protocols.calibration(model, tok, ds, make_cfg(("contextual",)))
    every = protocols.calibration(model, tok, ds, make_cfg())
    assert alone["contextual"] == every["contextual"] and alone["uncalibrated"] == every["uncalibrated"]
    # today's formula: per test prompt p_cf from its own three content-free prompts (calibrate_contextual)
    sets = calibration_sets(PromptSets(tok, make_cfg(("contextual",))), ds)
    normal, ids = sets["normal"].prompts, sets["normal"].builder.label_token_ids
    probs = forward(model, normal, ids)[0]
    cf = np.stack([forward(model, sets[f"content-free {t!r}"].prompts, ids)[0] for t in CONTENT_FREE_INPUTS], 1)
    assert_metrics(alone["contextual"], prompt_metrics(calibrate_contextual(probs, cf), normal, 3), "contextual")


def test_knn_never_holds_more_than_one_batch_of_test_logits(tok, model, monkeypatch):
    seen = []
    real = protocols.calibrate_knn

    def spy(z, *args, **kwargs):
        seen.append(np.asarray(z).shape)
        return real(z, *args, **kwargs)

    monkeypatch.setattr(protocols, "calibrate_knn", spy)
    protocols.calibration(model, tok, toy(), make_cfg(("knn",), n=24))
    assert seen and all(rows <= 8 for rows, _ in seen) and sum(rows for rows, _ in seen) == 24


def test_hidden_is_skipped_when_a_label_has_no_anchor(tok, model):
    ds = toy(demo_label=lambda i: i % 2)  # label 2 never in the demonstration split
    res = protocols.calibration(model, tok, ds, make_cfg(("hidden", "knn", "batch")))
    assert res["hidden"] is None and "labels [2] have no anchor" in res["setup"]["hidden"]["skipped"]
    assert res["knn"]["prompts"] == 24 and res["batch"]["prompts"] == 24
    assert "hidden n/a" in suites.SUITES["calibration"].summary(res)


def test_evaluate_writes_the_selected_methods(patch_runner, tok, tmp_path, capsys):
    patch_runner(model=tiny_llama(max_position_embeddings=512), tokenizer=tok, dataset=toy(n_cal=16))
    out = tmp_path / "eval"
    flags = ["--k", "1", "--test-samples", "4", "--eval-batch-size", "4", "--calibration", "batch", "knn"]
    assert main(["evaluate", *flags, "--output", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    calibration = metrics["before"]["calibration"]
    assert set(calibration) == {"uncalibrated", "batch", "knn", "setup"}
    assert json.loads((out / "config.json").read_text())["eval"]["calibration"] == ["batch", "knn"]
    assert "calibrated accuracy: batch " in capsys.readouterr().out
