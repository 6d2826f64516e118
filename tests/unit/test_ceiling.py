"""abft.attention.edit_last_row and `abft ceiling`: edits checked against the unedited model, against
transformers' own masking (hiding keys from the last query row) and against hand-computed rows."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fake_prompts import fake_prompts
from test_attention import BUILDERS, MODELS, _batch
from tiny_models import tiny_llama, tiny_qwen2

from abft.attention import edit_last_row, use_last_row_attention
from abft.batching import collate
from abft.cli import main
from abft.heads import head_statistics
from abft.objectives import ABFTObjective
from abft.report.ceiling import edit_rows, edited_scores, label_position_masks

TOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _every_head(rows_of):
    """An edit callback applying `rows_of(p)` to every head; records the layers it saw."""
    seen = []

    def edit(layer, p):
        seen.append(layer)
        return rows_of(p), torch.ones(p.shape[:2], dtype=torch.bool)

    return edit, seen


@pytest.mark.parametrize("padding", ["left", "right"])
@pytest.mark.parametrize("name", MODELS)
def test_identity_edit_keeps_the_output(name, padding):
    """Recomputing the last position from the unedited row (p @ V, GQA/MQA head mapping) gives the SDPA output."""
    plain, model = BUILDERS[name]("sdpa"), BUILDERS[name]("sdpa")
    use_last_row_attention(model)
    input_ids, mask, last_index, _ = _batch(padding)
    edit, seen = _every_head(lambda p: p)
    with torch.no_grad():
        expected = plain(input_ids=input_ids, attention_mask=mask).logits
        with edit_last_row(model, edit, last_index):
            logits = model(input_ids=input_ids, attention_mask=mask).logits
    real = mask.bool()
    assert (logits - expected)[real].abs().max().item() < TOL
    assert seen == list(range(model.config.num_hidden_layers))


@pytest.mark.parametrize("builder", [tiny_llama, tiny_qwen2])
def test_knockout_equals_hiding_the_keys_from_the_last_row(builder):
    """Knocking the label tokens out of every head's last row = an eager model whose 4-D mask hides those keys
    from the last query only (transformers' own masking path, not ours)."""
    prompts = fake_prompts(4, k=3, seed=2)
    batch = collate(prompts, 0)
    correct, wrong = label_position_masks(batch)
    model, eager = builder("sdpa"), builder("eager")
    use_last_row_attention(model)
    edit, _ = _every_head(lambda p: edit_rows(p, correct, wrong, "knockout"))
    with torch.no_grad(), edit_last_row(model, edit):
        logits = model(**batch.model_inputs()).logits[:, -1]
    length = batch.input_ids.shape[1]
    allowed = torch.tril(torch.ones(length, length, dtype=torch.bool))[None] & batch.attention_mask.bool()[:, None, :]
    allowed[:, -1] &= ~(correct | wrong)
    bias = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)[:, None]
    with torch.no_grad():
        reference = eager(input_ids=batch.input_ids, attention_mask=bias, position_ids=batch.position_ids).logits
        unedited = eager(**batch.model_inputs()).logits[:, -1]
    assert (logits - reference[:, -1]).abs().max().item() < TOL
    assert (logits - unedited).abs().max().item() > 1e-3  # the edit did change something


def test_edit_rows_by_hand():
    p = torch.tensor([[[0.1, 0.2, 0.3, 0.4]]])  # positions: correct, wrong, correct, other
    correct = torch.tensor([[True, False, True, False]])
    wrong = torch.tensor([[False, True, False, False]])
    expected = {
        "none": [0.1, 0.2, 0.3, 0.4],
        "knockout": [0.0, 0.0, 0.0, 1.0],
        "drop": [0.125, 0.0, 0.375, 0.5],
        "move": [0.2, 0.0, 0.4, 0.4],
        "target": [0.5, 0.0, 0.5, 0.0],
        "swap": [0.1, 0.4, 0.1, 0.4],
    }
    for edit, row in expected.items():
        np.testing.assert_allclose(edit_rows(p, correct, wrong, edit)[0, 0].numpy(), row, atol=1e-6, err_msg=edit)
    nothing_correct = torch.zeros_like(correct)
    for edit in ("move", "target"):  # no correct label: only the wrong-label mass goes
        dropped = edit_rows(p, nothing_correct, wrong, "drop")
        np.testing.assert_allclose(edit_rows(p, nothing_correct, wrong, edit), dropped, atol=1e-7)
    np.testing.assert_allclose(edit_rows(p, nothing_correct, wrong, "swap"), p, atol=1e-7)
    with pytest.raises(ValueError, match="unknown edit"):
        edit_rows(p, correct, wrong, "flip")


def test_filter_edits_the_heads_training_counts():
    """With edit 'none' the filter selects exactly the heads ABFT's objective counts as induction heads."""
    model = tiny_llama("sdpa")
    prompts = fake_prompts(10, k=1, seed=3)  # k=1: a low threshold, so some heads pass
    objective = ABFTObjective()
    probs, per_prompt = edited_scores(model, prompts, 0, [10, 11], "none", "filter", objective, batch_size=4)
    rate = head_statistics(model, prompts, 0, objective)["induction_rate"]
    assert per_prompt == pytest.approx(rate.sum(), abs=1e-9) and per_prompt > 0
    assert np.allclose(probs.sum(1), 1.0)
    _, every = edited_scores(model, prompts, 0, [10, 11], "none", "all", objective)
    assert every == model.config.num_hidden_layers * model.config.num_attention_heads


def test_ceiling_command(tiny_word_model_dir, tmp_path):
    out = tmp_path / "ceiling"
    args = ["ceiling", "--model", str(tiny_word_model_dir), "--dataset", "sst2", "--k", "2", "--samples", "12"]
    assert main([*args, "--edits", "none", "knockout", "move", "--output", str(out)]) == 0
    result = json.loads((out / "ceiling.json").read_text())
    rows = {(r["edit"], r["heads"]): r for r in result["rows"]}
    assert set(rows) == {
        ("none", "-"),
        ("knockout", "filter"),
        ("move", "filter"),
        ("knockout", "all"),
        ("move", "all"),
    }
    assert result["prompts"] == 12 and rows[("knockout", "all")]["edited_heads_per_prompt"] > 0
    for row in rows.values():
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["copies_last_label"] <= 1
    assert main([*args, "--output", str(out)]) == 2  # ceiling.json exists
    assert main([*args, "--samples", "0", "--output", str(tmp_path / "x")]) == 2
