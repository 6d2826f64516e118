"""--mauve-test / --mauve-prefix (abft.evaluation.mauve, abft.evaluation.generation) on a tiny random Llama.

MAUVE's sanity: a set against itself is ~1, two halves of one distribution are high, shuffled-token texts are
low; generation is deterministic for a seed and leaves the caller's RNG alone; features come from the base
weights; the runner writes metrics.json keys and the generations; a missing package is a UserError.
"""

from __future__ import annotations

import json
import random
import sys

import numpy as np
import pytest
import torch
from tiny_models import tiny_llama
from toy_dataset import toy

from abft.cli import main
from abft.config import RunConfig
from abft.data import load_dataset
from abft.errors import UserError
from abft.evaluation import mauve as mv
from abft.evaluation.generation import generate_continuations, text_features
from abft.models.weights import BaseWeights

pytest.importorskip("mauve", reason="mauve-text not installed (pip install 'abft[mauve]')")


def structured_texts(n: int, seed: int = 0) -> list[str]:
    """Prompt-like texts the tiny tokenizer knows: two 'sentence : wA wB sentiment : <label>' blocks."""
    rng = random.Random(seed)

    def block() -> str:
        label = rng.choice(["positive", "negative"])
        return f"sentence : w{rng.randrange(20)} w{rng.randrange(20)} sentiment : {label}"

    return [f"{block()} {block()}" for _ in range(n)]


def shuffled(texts: list[str], seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    out = []
    for text in texts:
        words = text.split()
        rng.shuffle(words)
        out.append(" ".join(words))
    return out


# ------------------------------------------------------------------------------------------ MAUVE itself
def test_mauve_of_features_against_themselves_is_one_and_against_a_shift_low():
    rng = np.random.default_rng(0)
    p = rng.normal(size=(60, 16)).astype(np.float32)
    q = rng.normal(size=(60, 16)).astype(np.float32)
    assert mv.mauve_score(p, p)["mauve"] == pytest.approx(1.0, abs=1e-6)
    assert mv.mauve_score(p, q)["mauve"] > 0.9  # another sample of the same distribution
    shifted = mv.mauve_score(p, q + 2.0)
    assert shifted["mauve"] < 0.1 and shifted["frontier_integral"] > 0.5
    assert set(shifted) == {"mauve", "mauve_star", "frontier_integral", "frontier_integral_star", "num_buckets"}
    assert mv.mauve_score(p, q) == mv.mauve_score(p, q)  # seeded k-means: deterministic


def test_mauve_of_texts_against_themselves_is_one_and_against_shuffled_tokens_low(model, tok):
    texts = structured_texts(100)
    feats = text_features(model, tok, texts)
    assert mv.mauve_score(feats, feats)["mauve"] == pytest.approx(1.0, abs=1e-6)
    assert mv.mauve_score(feats[:50], feats[50:])["mauve"] > 0.9
    assert mv.mauve_score(feats, text_features(model, tok, shuffled(texts)))["mauve"] < 0.3


# ------------------------------------------------------------------------------ generation and features
def test_generation_is_deterministic_for_a_seed_and_keeps_the_callers_rng(model, tok):
    prefixes = ["sentence : w1 w2", "w4", "w5 w6 w7 w8 w9", "sentiment :"] * 2
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = generate_continuations(model, tok, prefixes, 6, "sample", seed=7, batch_size=4)
    assert torch.equal(torch.rand(3), expected_next)  # fork_rng: training's random stream is untouched
    assert generate_continuations(model, tok, prefixes, 6, "sample", seed=7, batch_size=4) == a
    assert generate_continuations(model, tok, prefixes, 6, "sample", seed=8, batch_size=4) != a
    texts, counts = a
    assert len(texts) == len(prefixes) and all(0 <= c <= 6 for c in counts)
    greedy = generate_continuations(model, tok, prefixes, 6, "greedy", batch_size=8)
    assert generate_continuations(model, tok, prefixes, 6, "greedy", batch_size=1) == greedy  # left padding is exact


def test_per_prefix_limits_match_generating_each_alone(model, tok):
    prefixes = ["sentence : w1 w2", "w4", "w5 w6 w7 w8 w9", "sentiment :", "w3 w3"]
    limits = [1, 5, 2, 4, 3]
    texts, counts = generate_continuations(model, tok, prefixes, 5, "greedy", batch_size=2, limits=limits)
    assert all(c <= n for c, n in zip(counts, limits, strict=True))
    for i, (prefix, n) in enumerate(zip(prefixes, limits, strict=True)):
        alone, _ = generate_continuations(model, tok, [prefix], n, "greedy", batch_size=1)
        assert alone == [texts[i]]  # results return in input order
    item = mv.PrefixItem("sentence : w1", "w2 w3 sentiment : positive")  # 5 reference tokens
    cfg = RunConfig()
    cfg.eval.mauve_max_new_tokens = 32
    assert mv.MauveTest(tok, [item], "test", cfg).limits == [5]
    cfg.eval.mauve_max_new_tokens = 3
    assert mv.MauveTest(tok, [item, mv.PrefixItem("w1")], "test", cfg).limits == [3, 3]


def test_features_do_not_depend_on_batching(model, tok):
    texts = ["w1", "sentence : w1 w2 w3 sentiment : positive", "w7 w8"]
    for pooling in ("last", "mean"):
        batched = text_features(model, tok, texts, pooling, batch_size=3)
        single = text_features(model, tok, texts, pooling, batch_size=1)
        assert batched.shape == (3, model.config.hidden_size) and batched.dtype == np.float32
        np.testing.assert_allclose(batched, single, atol=1e-5)


def test_base_weights_featurise_with_the_base_model_and_restore_the_trained_one(tok):
    model = tiny_llama(max_position_embeddings=512)
    texts = structured_texts(4)
    base_feats = text_features(model, tok, texts)
    base = BaseWeights(model)
    q = model.model.layers[0].self_attn.q_proj.weight
    with torch.no_grad():
        q.add_(0.5)  # "training"
    trained = q.detach().clone()
    assert not np.allclose(text_features(model, tok, texts), base_feats, atol=1e-4)
    with base.applied(model):
        np.testing.assert_array_equal(text_features(model, tok, texts), base_feats)
    assert torch.equal(q, trained)


# ------------------------------------------------------------------------------------------ prefix sets
def test_builtin_prefixes_come_from_the_staicc_test_split_deterministically():
    ds = load_dataset("sst2")
    items = mv.builtin_prefixes(ds, 16)
    assert len(items) == 16 and items == mv.builtin_prefixes(ds, 16)
    originals = [ds.rows[i][0] for i in ds.test if len(ds.rows[i][0].split()) >= mv.MIN_WORDS][:16]
    for item, text in zip(items, originals, strict=True):
        assert item.reference_text == " ".join(text.split())
        assert len(item.prefix.split()) == len(text.split()) // 2


def test_prefix_files_jsonl_and_plain_text(tmp_path):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text(
        '{"prefix": "The film was ", "reference": "very good"}\n\n{"prefix": "It", "reference": " is."}\n'
        '{"prefix": "No reference here"}\n'
    )
    items = mv.load_prefix_file(jsonl)
    assert [i.prefix for i in items] == ["The film was", "It", "No reference here"]
    assert [i.reference_text for i in items] == ["The film was very good", "It is.", None]
    assert len(mv.load_prefix_file(jsonl, 2)) == 2
    plain = tmp_path / "p.txt"
    plain.write_text("one two three four five\nsolo\n")
    assert mv.load_prefix_file(plain) == [mv.PrefixItem("one two", "three four five"), mv.PrefixItem("solo")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prefix": "ok"}\n{"text": "no prefix"}\n')
    with pytest.raises(UserError, match="bad.jsonl:2"):
        mv.load_prefix_file(bad)
    with pytest.raises(UserError, match="cannot read"):
        mv.load_prefix_file(tmp_path / "missing.txt")


def test_texts_longer_than_the_context_are_a_user_error(tok):
    cfg = RunConfig()
    cfg.eval.mauve_test, cfg.eval.mauve_samples, cfg.eval.mauve_max_new_tokens = True, 8, 4
    ds = toy(n_cal=16)
    test = mv.prepare(tiny_llama(max_position_embeddings=512), tok, ds, cfg)
    longest = max(max(map(len, test.prefix_ids)) + 4, *map(len, test.reference_ids))
    assert mv.prepare(tiny_llama(max_position_embeddings=longest), tok, ds, cfg) is not None
    message = f"a MAUVE text has {longest} tokens, more than the model's context of {longest - 1}; use shorter"
    with pytest.raises(UserError, match=message):
        mv.prepare(tiny_llama(max_position_embeddings=longest - 1), tok, ds, cfg)


# ---------------------------------------------------------------------------------------------- runner
@pytest.fixture
def tiny_run(patch_runner, tok):
    patch_runner(model=tiny_llama(max_position_embeddings=512), tokenizer=tok)  # not `model`: training changes it
    return ["--k", "1", "--test-samples", "4", "--eval-batch-size", "8", "--mauve-samples", "24"]


def test_run_writes_mauve_before_and_after(tiny_run, tmp_path, capsys):
    out = tmp_path / "run"
    train = ["--train-samples", "4", "--pseudo-batch-size", "4", "--epochs", "1", "--lr", "1e-1", "--no-save"]
    assert main(["run", *tiny_run, *train, "--mauve-test", "--mauve-max-new-tokens", "4", "--output", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    before, after = metrics["before"]["mauve"], metrics["after"]["mauve"]
    for result in (before, after):
        assert 0 < result["mauve"] <= 1 + 1e-9 and 0 < result["mauve_star"] <= 1 + 1e-9
        assert result["prefixes"] == result["references"] == 24 and result["max_new_tokens"] == 4
        assert result["decoding"] == "sample" and result["source"] == "built-in: toy test split"
    assert "vs_before" not in before and 0 < after["vs_before"]["mauve"] <= 1 + 1e-9
    assert "accuracy" in metrics["before"]  # the normal test still runs
    rows = [json.loads(line) for line in (out / "mauve_after.jsonl").read_text().splitlines()]
    assert len(rows) == 24 and set(rows[0]) == {"prefix", "reference", "continuation"}
    assert (out / "mauve_before.jsonl").is_file()
    assert "after_mauve_seconds" in json.loads((out / "timings.json").read_text())
    log = capsys.readouterr().out
    assert "before: MAUVE" in log and "vs before fine-tuning" in log
    assert RunConfig.from_dict(json.loads((out / "config.json").read_text())).eval.mauve_test


def test_evaluate_with_a_prefix_file(tiny_run, tmp_path):
    prefixes = tmp_path / "prefixes.jsonl"
    rows = [
        {"prefix": f"sentence : w{i % 20}", "reference": f"w{(i * 7) % 20} sentiment : positive"} for i in range(12)
    ]
    prefixes.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "eval"
    flags = ["--mauve-prefix", str(prefixes), "--mauve-decoding", "greedy", "--mauve-max-new-tokens", "3"]
    assert main(["evaluate", *tiny_run, *flags, "--output", str(out)]) == 0  # --mauve-prefix implies the test
    result = json.loads((out / "metrics.json").read_text())["before"]["mauve"]
    assert result["prefixes"] == 12 and result["source"] == str(prefixes) and result["decoding"] == "greedy"
    assert 0 < result["mauve"] <= 1 + 1e-9


def test_missing_package_and_bad_options_are_user_errors(tiny_run, tmp_path, monkeypatch, capsys):
    assert main(["evaluate", *tiny_run, "--mauve-test", "--mauve-samples", "0", "--output", str(tmp_path / "a")]) == 2
    assert "--mauve-samples must be at least 1" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "mauve", None)  # import mauve -> ImportError
    with pytest.raises(UserError, match=r"pip install 'abft\[mauve\]'"):
        mv.require_mauve()
    assert main(["evaluate", *tiny_run, "--mauve-test", "--output", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "abft[mauve]" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # nothing left behind
