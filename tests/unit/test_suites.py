"""The evaluation protocols (abft.evaluation.suites, .protocols, .prompt_sets and .variants).

Metric compositions use a fake scorer (a rule on each prompt, monkeypatched over score_prompts) so the
expected numbers can be worked out by hand; prompt sets are checked against StaICC's own experimentors
(the installed wheel is only a test oracle); the runner wiring runs a tiny random Llama with a tiny
word-level tokenizer.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from collections import Counter

import numpy as np
import pytest
from tiny_models import tiny_llama
from tiny_tokenizer import word_tokenizer
from toy_dataset import C3, toy

from abft import runner
from abft.cli import main
from abft.config import RunConfig
from abft.data import PAPER_DATASETS, demonstration_sets, load_dataset, test_pairs
from abft.data.prompts import PromptBuilder
from abft.errors import UserError
from abft.evaluation import scoring, suites
from abft.evaluation.calibration import apply_calibration, calibrate_contextual, fit_contextual_calibration
from abft.evaluation.metrics import classification_metrics
from abft.evaluation.prompt_sets import PromptSets, bias_sets, calibration_sets, demo_sets, template_sets
from abft.evaluation.variants import demo_consistency_pairs, unseen_label_pairs
from abft.models.context import check_context


def make_cfg(k=4, n=8, mode="space", **ev) -> RunConfig:
    cfg = RunConfig()
    cfg.data.k, cfg.data.test_samples, cfg.data.label_token_mode = k, n, mode
    cfg.eval.eval_batch_size = 8
    for key, value in ev.items():
        setattr(cfg.eval, key, value)
    return cfg


def query_of(prompt) -> str:
    """The query text of a toy-dataset prompt in 'space' mode ("... sentence: <query> sentiment:")."""
    return prompt.text.rsplit("sentence: ", 1)[1].removesuffix(" sentiment:")


@pytest.fixture
def fake_scorer(monkeypatch):
    """Install `rule(prompt, label_token_ids) -> (C,) distribution` as the scorer; records scored prompts."""
    scored: list = []

    def install(rule):
        def score(model, prompts, label_token_ids, pad_id, batch_size=16, description=""):
            scored.extend(suites.ScoreCache.key(p, label_token_ids) for p in prompts)
            return np.array([rule(p, list(label_token_ids)) for p in prompts], dtype=np.float64)

        monkeypatch.setattr(scoring, "score_prompts", score)
        return scored

    return install


def one_hot(c, label, high=0.7):
    row = np.full(c, (1 - high) / (c - 1))
    row[label] = high
    return row


def quiet(fn, *args, **kwargs):
    """Call a StaICC function quietly (it prints a lot and warns about 'tampering')."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def staicc_experimentor(kind: str, dataset: str = "financial_phrasebank", **kwargs):
    """StaICC's `experimentor.<kind>` on its own copy of `dataset` with k = 4 (the installed wheel: an oracle)."""
    from StaICC.util import experimentor, hgf_dataset_loader

    data = quiet(getattr(hgf_dataset_loader, dataset))
    return quiet(getattr(experimentor, kind), original_dataset=data, k=4, **kwargs)


def staicc_sets(build, name: str = "financial_phrasebank") -> dict:
    """Our prompt sets (a prompt_sets builder) for StaICC's 1024 test prompts with k = 4 and its exact text."""
    return build(PromptSets(word_tokenizer(), make_cfg(k=4, n=1024, mode="staicc")), load_dataset(name))


# ------------------------------------------------------------------------------------ template
def test_template_consistency_by_hand(tok, fake_scorer):
    # gold 0: predicted 0 under all 9 templates (group 9/9); gold 1 or 2: correct only with label affix "\n"
    # (templates 0, 4, 8 of the L9 array), else (gold + 1) % 3 (group 6/9).
    def rule(p, _):
        pred = p.gold if p.gold == 0 or "\n" in p.text else (p.gold + 1) % 3
        return one_hot(3, pred)

    fake_scorer(rule)
    ds = toy(test_label=lambda i: i % 3)
    res = suites.template_consistency(None, tok, ds, make_cfg(k=2, n=6))
    assert res["queries"] == 6
    assert res["consistency"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)  # golds 0,1,2,0,1,2
    assert [t["accuracy"] for t in res["templates"]] == pytest.approx(
        [1, 1 / 3, 1 / 3, 1 / 3, 1, 1 / 3, 1 / 3, 1 / 3, 1]
    )
    assert res["mean_accuracy"] == pytest.approx(5 / 9)
    assert [t["label_affix"] for t in res["templates"]] == ["\n", " ", "\t", "\t", "\n", " ", " ", "\t", "\n"]
    assert suites.template_consistency(None, tok, ds, make_cfg(k=2, n=1000))["queries"] == 100


def test_template_prompts_are_staiccs():
    """The 9 x 100 prompts of the template test are StaICC's (staicc mode gives its exact text)."""
    exp = staicc_experimentor("template_sensitivity_experimentor", dividing=[1024, 512, 100])
    sets = staicc_sets(template_sets)
    assert len(sets) == 9
    for t, s in enumerate(sets.values()):
        quiet(exp._set_template, t)
        assert [p.text for p in s.prompts] == quiet(exp.prompt_set)


# -------------------------------------------------------------------------------- demonstrations
def test_demo_consistency_uses_lists_i_plus_128t():
    ds = load_dataset("sst2")
    sets = demonstration_sets(ds, 4, 1024)
    rows = demo_consistency_pairs(ds, 4)
    assert len(rows) == 128 and all(len(r) == 8 for r in rows)
    for i, row in enumerate(rows):
        assert row == [(sets[i + 128 * t], ds.test[i]) for t in range(8)]
    assert demo_consistency_pairs(ds, 4, queries=5) == rows[:5]
    small = toy(n_test=20)  # fewer than 128 test queries: the stride is the test split
    sets = demonstration_sets(small, 3, 160)
    assert demo_consistency_pairs(small, 3)[7] == [(sets[7 + 20 * t], small.test[7]) for t in range(8)]


def test_demo_prompts_are_staiccs():
    exp = staicc_experimentor("demonstration_sensitivity_experimentor", dividing=[1024, 512, 512])
    theirs = quiet(exp.prompt_set)  # time-major: t * 128 + i
    ours = [p.text for p in staicc_sets(demo_sets)["demo"].prompts]  # query-major: i * 8 + t
    assert len(ours) == len(theirs) == 1024
    assert ours == [theirs[t * 128 + i] for i in range(128) for t in range(8)]


def test_demo_consistency_by_hand(tok, fake_scorer):
    fake_scorer(lambda p, _: one_hot(3, p.demo_labels[-1]))  # copies the last demonstration's label
    ds = toy()
    res = suites.demo_consistency(None, tok, ds, make_cfg(k=3, n=16))
    sets = demonstration_sets(ds, 3, 1024)
    last = np.array([[ds.rows[sets[i + 128 * t][-1]][1] for t in range(8)] for i in range(16)])
    gold = np.array([ds.rows[ds.test[i]][1] for i in range(16)])
    expected = np.mean([Counter(row.tolist()).most_common(1)[0][1] / 8 for row in last])
    assert res["queries"] == 16 and res["sets"] == 8
    assert res["consistency"] == pytest.approx(expected)
    assert res["accuracy_per_set"] == pytest.approx((last == gold[:, None]).mean(axis=0).tolist())
    assert res["accuracy"] == pytest.approx((last == gold[:, None]).mean())


# -------------------------------------------------------------------------------- generalization
def test_generalization_in_and_out_of_domain_by_hand(tok, fake_scorer):
    a, b, c = toy("a", ("negative", "positive")), toy("b", ("false", "true"), seed=1), toy("c", C3, seed=2)
    a_ids = PromptSets(tok, make_cfg()).builder(a.info).label_token_ids
    fake_scorer(lambda p, ids: one_hot(len(ids), p.gold if ids == a_ids else 0))  # right on a only
    cfg = make_cfg(k=2, n=10)
    res = suites.generalization(None, tok, a, cfg, datasets=[a, b, c])
    zero = {d.info.name: np.mean([d.rows[q][1] == 0 for q in d.test[:10]]) for d in (b, c)}
    assert list(res["datasets"]) == ["a", "b", "c"] and res["in_domain"] == "a"
    assert res["in_domain_accuracy"] == 1.0
    assert res["datasets"]["b"]["accuracy"] == pytest.approx(zero["b"])
    assert res["out_of_domain_accuracy"] == pytest.approx((zero["b"] + zero["c"]) / 2)
    # a dataset that is not in the list is evaluated first, as the in-domain one
    res2 = suites.generalization(None, tok, a, cfg, datasets=[b, c])
    assert list(res2["datasets"]) == ["a", "b", "c"] and res2["out_of_domain_accuracy"] == res["out_of_domain_accuracy"]


def test_generalization_table_on_the_8_paper_datasets(tok, fake_scorer):
    fake_scorer(lambda p, ids: one_hot(len(ids), 0))
    before = suites.generalization(None, tok, load_dataset("trec"), make_cfg(k=1, n=3))
    assert list(before["datasets"]) == list(PAPER_DATASETS) and before["in_domain"] == "trec"
    after = json.loads(json.dumps(before))
    for name, r in after["datasets"].items():
        r["accuracy"] = 1.0 if name == "trec" else 0.5
    after["in_domain_accuracy"], after["out_of_domain_accuracy"] = 1.0, 0.5
    table = suites.generalization_table(before, after)
    assert [r["dataset"] for r in table["rows"]] == list(PAPER_DATASETS)
    assert [r["domain"] for r in table["rows"]] == ["in" if n == "trec" else "out" for n in PAPER_DATASETS]
    for r in table["rows"]:
        assert r["gain"] == pytest.approx(r["after"] - r["before"])
    assert table["in_domain_dataset"] == "trec"
    ood_before = np.mean([r["before"] for r in table["rows"] if r["domain"] == "out"])
    assert table["out_of_domain"] == pytest.approx({"before": ood_before, "after": 0.5, "gain": 0.5 - ood_before})
    assert table["in_domain"]["after"] == 1.0
    text = suites.format_generalization_table(table)
    assert len(text.splitlines()) == 1 + 8 + 2 and "out-of-domain" in text
    only = suites.generalization_table(before, None)
    assert only["rows"][0]["after"] is None and only["rows"][0]["gain"] is None
    assert suites.generalization_table(None, None) is None


# ---------------------------------------------------------------------------------- unseen label
@pytest.mark.parametrize("name", ["sst2", "trec", "financial_phrasebank"])
def test_unseen_label_sampler_never_shows_the_gold_label(name):
    ds = load_dataset(name)
    pairs = unseen_label_pairs(ds, 4, 1024)
    normal = test_pairs(ds, 4, 1024)
    for j, ((demos, q), (normal_demos, normal_q)) in enumerate(zip(pairs, normal, strict=True)):
        gold = ds.rows[q][1]
        assert q == normal_q == ds.test[j % len(ds.test)]
        assert len(demos) == 4 and all(ds.rows[i][1] != gold for i in demos)
        assert set(demos) <= set(ds.demonstration)
        if all(ds.rows[i][1] != gold for i in normal_demos):
            assert demos == normal_demos  # only lists holding the gold label are replaced
    assert unseen_label_pairs(ds, 4, 40) == pairs[:40]


def test_unseen_label_sampler_is_staiccs_out_of_domain_mode():
    ds = load_dataset("trec")
    exp = staicc_experimentor("single_experimentor", "trec")
    quiet(exp.set_out_of_domain_mode)
    ours = unseen_label_pairs(ds, 4, 1024)
    assert [demos for demos, _ in ours] == [
        [ds.demonstration[i] for i in exp.demonstration_sampler[j]] for j in range(1024)
    ]


def test_unseen_label_impossible_is_a_user_error():
    ds = toy(demo_label=lambda i: 0 if i < 58 else 1)  # only 2 demonstrations are not label 0
    with pytest.raises(UserError, match="unseen-label test needs 4"):
        unseen_label_pairs(ds, 4, 8)
    assert len(unseen_label_pairs(ds, 2, 8)) == 8


def test_unseen_label_by_hand(tok, fake_scorer):
    fake_scorer(lambda p, _: one_hot(3, p.demo_labels[-1] if p.demo_labels else 0))
    ds = toy()
    res = suites.unseen_label(None, tok, ds, make_cfg(k=3, n=20))
    pairs = test_pairs(ds, 3, 20)
    assert set(res) == {"normal", "unseen_label", "zero_shot"}
    assert res["unseen_label"]["accuracy"] == 0.0  # the copied label is never the gold one
    assert res["normal"]["accuracy"] == pytest.approx(np.mean([ds.rows[d[-1]][1] == ds.rows[q][1] for d, q in pairs]))
    assert res["zero_shot"]["accuracy"] == pytest.approx(np.mean([ds.rows[q][1] == 0 for _, q in pairs]))
    assert res["zero_shot"]["prompts"] == 20 and res["unseen_label"]["copies_last_label"] == 1.0


# ------------------------------------------------------------------------------------------ bias
def bias_rule(demo_words):
    def rule(p, _):
        query = query_of(p)
        if query == "":
            return np.array([0.5, 0.3, 0.2])  # contextual
        if len(query.split(" ")) == 128:
            assert set(query.split(" ")) <= demo_words
            return np.array([0.2, 0.2, 0.6])  # domain
        counts = np.bincount(p.demo_labels, minlength=3)
        return (counts + 1) / (len(p.demo_labels) + 3)  # follows the shown labels

    return rule


def test_bias_metrics_by_hand(tok, fake_scorer):
    # every demonstration is label 0, test golds 0, 0, 0, 1, 1, 2: with m wrong labels (shown as (0 + 1) % 3 = 1)
    # the prediction is [(5 - m)/7, (m + 1)/7, 1/7]: argmax 0 for m <= 2 (accuracy 1/2), 1 for m >= 3 (1/3).
    ds = toy(demo_label=lambda i: 0, test_label=lambda i: [0, 0, 0, 1, 1, 2][i % 6])
    fake_scorer(bias_rule({w for i in ds.demonstration for w in ds.rows[i][0].split(" ")}))
    res = suites.bias(None, tok, ds, make_cfg(k=4, n=6))
    assert res["contextual_bias"] == pytest.approx(-(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2)))
    assert res["domain_bias"] == pytest.approx(-(0.4 * math.log(0.2) + 0.6 * math.log(0.6)))
    kl = 5 / 7 * math.log((5 / 7) / (1 / 2)) + 1 / 7 * math.log((1 / 7) / (1 / 3)) + 1 / 7 * math.log((1 / 7) / (1 / 6))
    assert res["posterior_bias"] == pytest.approx(kl)
    assert res["max_entropy"] == pytest.approx(math.log(3))
    assert res["gold_distribution"] == pytest.approx([1 / 2, 1 / 3, 1 / 6])
    assert res["mean_distribution"] == pytest.approx([5 / 7, 1 / 7, 1 / 7])
    noise = res["label_noise"]
    assert noise["correct_ratios"] == [1.0, 0.75, 0.5, 0.25, 0.0] and noise["wrong_labels"] == [0, 1, 2, 3, 4]
    assert noise["accuracy"] == pytest.approx([1 / 2, 1 / 2, 1 / 2, 1 / 3, 1 / 3])
    # y - mean(y) = [1/15, 1/15, 1/15, -1/10, -1/10]; sum dx dy = 0.125, sum dx^2 = 0.625
    assert noise["slope"]["accuracy"] == pytest.approx(0.2)
    # true-label likelihood (3 (5 - m) + 2 (m + 1) + 1) / 42 = (18 - m) / 42, m = 4 (1 - r): slope 4/42
    assert noise["true_label_likelihood"] == pytest.approx([(18 - m) / 42 for m in range(5)])
    assert noise["slope"]["true_label_likelihood"] == pytest.approx(4 / 42)
    # a predicted class that is never gold: infinite divergence, reported as None
    zeros = toy(demo_label=lambda i: 0, test_label=lambda i: 0)
    assert suites.bias(None, tok, zeros, make_cfg(k=4, n=4))["posterior_bias"] is None
    assert suites.bias(None, tok, ds, make_cfg(k=0, n=4))["label_noise"] is None


def test_bias_prompts_are_staiccs():
    """Contextual (empty query), domain (128 random words) and the 5 label-noise levels, all 1024 prompts."""
    split = [1024, 512, 512]
    sets = staicc_sets(bias_sets)
    for kind in ("contextual", "domain"):
        exp = staicc_experimentor("prior_bias_experimentor", dividing=split, bias_type=kind)
        assert [p.text for p in sets[kind].prompts] == quiet(exp.prompt_set), kind
    gler = staicc_experimentor("GLER_experimentor", dividing=split)
    quiet(gler._sensitivity_init)
    noise = [s for s in sets.values() if s.wrong is not None]
    assert [s.wrong for s in noise] == [0, 1, 2, 3, 4]
    for level, s in enumerate(noise):
        assert [p.text for p in s.prompts] == quiet(gler.prompt_set), level
        quiet(gler._sensitivity_step)
    assert noise[0].prompts is sets["normal"].prompts  # no wrong label: the normal prompts, not built again


# ----------------------------------------------------------------------------------- calibration
CF = {"N/A": [0.7, 0.2, 0.1], "": [0.6, 0.3, 0.1], "[MASK]": [0.8, 0.1, 0.1]}  # mean [0.7, 0.2, 0.1]


def test_calibration_by_hand(tok, fake_scorer):
    def rule(p, _):
        query, last = query_of(p), p.demo_labels[-1]
        if query in CF:  # content-free: depends on the prompt's demonstrations
            return np.roll(CF[query], last)
        return np.roll([0.5, 0.3, 0.2], last)  # copies the last label; calibrated: [.71, 1.5, 2] -> last + 2

    fake_scorer(rule)
    ds = toy()
    res = suites.calibration(None, tok, ds, make_cfg(k=2, n=30, calibration=("contextual",)))
    pairs = test_pairs(ds, 2, 30)
    probs, calibrated = [], []
    for demos, q in pairs:
        last, gold = ds.rows[demos[-1]][1], ds.rows[q][1]
        p = np.roll([0.5, 0.3, 0.2], last)
        p_cf = np.mean([np.roll(v, last) for v in CF.values()], axis=0)
        p_cf = p_cf / p_cf.sum()
        probs.append(p)
        calibrated.append((p / p_cf) / (p / p_cf).sum())
    gold = np.array([ds.rows[q][1] for _, q in pairs])
    expected = classification_metrics(np.array(calibrated), gold, 3)
    for key, value in expected.items():
        assert res["contextual"][key] == pytest.approx(value), key
    assert res["uncalibrated"]["accuracy"] == pytest.approx(
        classification_metrics(np.array(probs), gold, 3)["accuracy"]
    )
    assert res["contextual"]["accuracy"] != res["uncalibrated"]["accuracy"]  # the case is not trivial
    assert res["setup"]["contextual"]["content_free_inputs"] == ["N/A", "", "[MASK]"]
    assert set(res) == {"uncalibrated", "contextual", "setup"}


def test_content_free_prompts_keep_the_demonstrations(tok):
    ds = toy()
    sets = calibration_sets(PromptSets(tok, make_cfg(k=3, n=5, calibration=("contextual",))), ds)
    builder, normal = sets["normal"].builder, sets["normal"].prompts
    for j, (demos, _) in enumerate(test_pairs(ds, 3, 5)):
        for text in ("N/A", "", "[MASK]"):
            p = sets[f"content-free {text!r}"].prompts[j]
            assert p.text == builder.render([ds.rows[i] for i in demos], (text, 0))[0]
            assert p.demo_labels == normal[j].demo_labels and p.gold == normal[j].gold


# --------------------------------------------------------------------------------------- running
def test_each_prompt_is_scored_once_per_stage(tok, fake_scorer):
    scored = fake_scorer(lambda p, ids: one_hot(len(ids), 0))
    ds = toy()
    cfg = make_cfg(k=2, n=8, test_type=("normal", "template", "demo"), unseen_label_test=True)
    cfg.eval.bias_test, cfg.eval.calibration = True, ("contextual", "domain", "batch")  # probabilities only
    logs = []
    out = suites.run_suites(None, tok, ds, cfg, log=logs.append)
    assert [key for key in out if key in suites.SUITES] == ["template", "demo", "unseen_label", "bias", "calibration"]
    assert out["accuracy"] == out["unseen_label"]["normal"]["accuracy"]  # the normal test, at the top level
    assert len(scored) == len(set(scored))
    assert len(logs) == 6 and logs[0].strip().startswith(": accuracy ") and "(8 prompts)" in logs[0]
    assert "x 9 templates" in logs[1]


def test_flags_parse():
    from abft.cli import build_parser
    from abft.cli.flags import config_from_args

    args = build_parser().parse_args(
        ["run", "--test-type", "normal", "demo", "--generalization-test", "--unseen-label-test", "--bias-test"]
    )
    ev = config_from_args(args).eval
    assert ev.test_type == ("normal", "demo") and ev.generalization_test and ev.unseen_label_test and ev.bias_test
    assert not ev.calibration
    assert RunConfig().eval.test_type == ("normal",) and suites.selected(RunConfig()) == ["normal"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--test-type", "noisy"])


@pytest.fixture
def tiny_run(patch_runner, tok):
    patch_runner(model=tiny_llama(max_position_embeddings=512), tokenizer=tok, dataset=toy(n_cal=16))
    return ["--k", "1", "--test-samples", "4", "--eval-batch-size", "4"]


TRAIN = ["--train-samples", "2", "--pseudo-batch-size", "2", "--epochs", "1", "--lr", "1e-3", "--no-save"]
ALL_FLAGS = ["--test-type", "normal", "template", "demo", "--generalization-test", "--unseen-label-test"]
ALL_FLAGS += ["--bias-test", "--calibration"]


def test_run_writes_every_protocol_before_and_after(tiny_run, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", *tiny_run, *TRAIN, *ALL_FLAGS, "--output", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["eval"]["test_type"] == ["normal", "template", "demo"]
    assert all(config["eval"][f] for f in ("generalization_test", "unseen_label_test", "bias_test", "calibration"))
    assert RunConfig.from_dict(config).eval.test_type == ("normal", "template", "demo")
    metrics = json.loads((out / "metrics.json").read_text())
    keys = {"template", "demo", "generalization", "unseen_label", "bias", "calibration", "accuracy"}
    assert keys <= set(metrics["before"]) and keys <= set(metrics["after"])
    assert metrics["before"]["template"]["queries"] == 4 and metrics["before"]["demo"]["queries"] == 4
    assert metrics["before"]["unseen_label"]["normal"]["accuracy"] == metrics["before"]["accuracy"]
    table = metrics["generalization"]
    assert [r["dataset"] for r in table["rows"]] == ["toy", *PAPER_DATASETS]
    assert [r["domain"] for r in table["rows"]].count("in") == 1
    assert "out-of-domain mean" in capsys.readouterr().out
    timings = json.loads((out / "timings.json").read_text())
    assert "after_bias_seconds" in timings and "before_test_seconds" in timings  # the normal test: "test"


def test_no_prompt_set_is_built_twice_per_run(tiny_run, tmp_path, monkeypatch):
    """Prompts do not depend on the weights: every set is built once, before the run (not per stage), and a
    set that several protocols use (the normal test prompts, the empty-query prompts) only once."""
    built, at_run = [], []
    build_many, run = PromptBuilder.build_many, runner._run

    def counting_build_many(self, examples):
        prompts = build_many(self, examples)
        built.append((tuple(self.label_token_ids), tuple(p.text for p in prompts)))
        return prompts

    def counting_run(*args, **kwargs):
        at_run.append(len(built))
        return run(*args, **kwargs)

    monkeypatch.setattr(PromptBuilder, "build_many", counting_build_many)
    monkeypatch.setattr(runner, "_run", counting_run)
    assert main(["run", *tiny_run, *TRAIN, *ALL_FLAGS, "--output", str(tmp_path / "run")]) == 0
    assert at_run == [len(built)]  # nothing is built once the run has started (neither stage)
    assert len(built) == len(set(built))  # no set twice
    # test + train + validation prompts, 8 templates (template 0 = the test prompts), demo, 8 paper datasets (the toy
    # one is the test prompts), unseen + 0-shot, contextual (= content-free "") + domain + 1 noise level (k = 1:
    # wrong labels 0, 0, 0, 0, 1), content-free "N/A" and "[MASK]", domain-calibration and anchor prompts
    assert len(built) == 3 + 8 + 1 + 8 + 2 + 3 + 2 + 2


def test_default_and_template_only_runs(tiny_run, tmp_path):
    assert main(["evaluate", *tiny_run, "--output", str(tmp_path / "plain")]) == 0
    plain = json.loads((tmp_path / "plain" / "metrics.json").read_text())
    normal_keys = {"accuracy", "accuracy_se", "macro_f1", "true_label_likelihood", "ece", "copies_last_label"}
    normal_keys.add("prompts")
    assert set(plain["before"]) == normal_keys  # no new protocol runs by default
    assert main(["evaluate", *tiny_run, "--test-type", "template", "--output", str(tmp_path / "tpl")]) == 0
    tpl = json.loads((tmp_path / "tpl" / "metrics.json").read_text())
    assert set(tpl["before"]) == {"template"} and "accuracy_gain" not in tpl
    first = tpl["before"]["template"]["templates"][0]  # the default template on all 4 test prompts: the normal test
    assert first["accuracy"] == plain["before"]["accuracy"] and first["label_affix"] == "\n"


def test_reuse_fore_test_hits_only_for_the_same_base_model_prompts_and_settings(patch_runner, tok, tmp_path, capsys):
    def run(name, *extra, model=None):
        patch_runner(model=model, tokenizer=tok, dataset=toy(n_cal=16))  # model None: a fresh seed-0 Llama per run
        args = ["--k", "1", "--test-samples", "4", *TRAIN, "--test-type", "normal", "template", "--reuse-fore-test"]
        assert main(["run", *args, *extra, "--output", str(tmp_path / name)]) == 0
        read = lambda f: json.loads((tmp_path / name / f).read_text())  # noqa: E731
        return read("metrics.json")["before"], "before_reused" in read("timings.json")

    first, reused = run("abft")
    assert not reused
    capsys.readouterr()
    second, reused = run("e2e", "--method", "e2e", "--lr", "1e-2")  # training settings do not matter
    assert reused and second == first
    predictions = lambda name, stage: (tmp_path / name / f"predictions_{stage}.jsonl").read_text()  # noqa: E731
    assert predictions("e2e", "before") == predictions("abft", "before")  # the cache's, exactly
    assert '"flipped"' in predictions("e2e", "after")
    printed = capsys.readouterr().out
    assert "reused from the fore-test cache" in printed and "template consistency" in printed
    assert not run("other-weights", model=tiny_llama(seed=1, max_position_embeddings=512))[1]
    assert not run("other-batch", "--eval-batch-size", "2")[1]
    assert not run("other-template-set", "--test-type", "normal")[1]


def test_reuse_fore_test_covers_every_protocol_of_a_paper_table_cell(patch_runner, tok, tmp_path, capsys):
    """benchmarks/paper_tables.py's t23 cells: the E2E run reuses the ABFT run's whole before stage."""
    protocols = ["--test-type", "normal", "template", "demo", "--unseen-label-test", "--reuse-fore-test"]

    def run(name, *extra):
        patch_runner(tokenizer=tok, dataset=toy(n_cal=16))
        args = ["--k", "1", "--test-samples", "4", *TRAIN, *protocols, *extra, "--output", str(tmp_path / name)]
        assert main(["run", *args]) == 0
        read = lambda f: json.loads((tmp_path / name / f).read_text())  # noqa: E731
        return read("metrics.json")["before"], "before_reused" in read("timings.json")

    first, reused = run("abft")
    assert not reused and {"template", "demo", "unseen_label"} <= set(first)
    capsys.readouterr()
    second, reused = run("e2e", "--method", "e2e")
    printed = capsys.readouterr().out
    assert reused and second == first
    assert "demonstration consistency" in printed and "unseen-label accuracy" in printed


# --------------------------------------------------------------------------------- calibration, context
def test_batched_calibration_is_the_per_prompt_one_bit_for_bit():
    rng = np.random.default_rng(0)
    probs, cf = rng.dirichlet(np.ones(4), 50), rng.dirichlet(np.ones(4), (50, 3))
    expected = np.stack([apply_calibration(probs[j], fit_contextual_calibration(cf[j])) for j in range(50)])
    np.testing.assert_array_equal(calibrate_contextual(probs, cf), expected)
    with pytest.raises(ValueError, match="content-free mean probability is 0"):
        calibrate_contextual(probs[:1], np.array([[[0.5, 0.5, 0.0, 0.0]]]))
    with pytest.raises(ValueError, match=r"\(N, M, C\)"):
        calibrate_contextual(probs, cf[:, 0])


def test_check_context():
    model = tiny_llama()  # 128 positions
    check_context(model, [128, 5])
    with pytest.raises(UserError, match="a MAUVE text has 129 tokens, more than the model's context of 128; shorter"):
        check_context(model, [3, 129], "a MAUVE text", "shorter")
    prompt = type("P", (), {"input_ids": list(range(200))})()
    with pytest.raises(UserError, match="a prompt has 200 tokens.*; lower k$"):  # the CLI says --k
        check_context(model, [prompt])
