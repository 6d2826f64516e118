"""abft.attention.edit_last_row and `abft ceiling`: edits checked against the unedited model, against
transformers' own masking (hiding keys from the last query row) and against hand-computed rows."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fake_prompts import fake_prompts
from test_attention import BUILDERS, MODELS, _batch, _one_thread  # noqa: F401  (_one_thread: autouse fixture)
from tiny_models import tiny_llama, tiny_qwen2

from abft.analysis.ceiling import edit_rows, edited_scores, label_position_masks
from abft.analysis.heads import head_statistics
from abft.attention import edit_last_row, last_real_index, use_last_row_attention
from abft.batching import collate
from abft.cli import main
from abft.objectives import ABFTObjective

TOL = 1e-5


def _heads_edit(rows_of, heads=None):
    """An edit callback applying `rows_of(p)` to `heads` (default: every head); records the layers it saw."""
    seen = []

    def edit(layer, p, visible):
        seen.append(layer)
        select = torch.ones(p.shape[:2], dtype=torch.bool)
        if heads is not None:
            select[:] = False
            select[:, heads] = True
        return rows_of(p), select

    return edit, seen


@pytest.mark.parametrize("padding", ["left", "right"])
@pytest.mark.parametrize("name", MODELS)
def test_identity_edit_keeps_the_output(name, padding):
    """Recomputing the last position from the unedited row (p @ V, GQA/MQA head mapping) gives the SDPA output."""
    plain, model = BUILDERS[name]("sdpa"), BUILDERS[name]("sdpa")
    use_last_row_attention(model)
    input_ids, mask, last_index, _ = _batch(padding)
    edit, seen = _heads_edit(lambda p: p)
    with torch.no_grad():
        expected = plain(input_ids=input_ids, attention_mask=mask).logits
        with edit_last_row(model, edit, last_index):
            logits = model(input_ids=input_ids, attention_mask=mask).logits
    real = mask.bool()
    assert (logits - expected)[real].abs().max().item() < TOL
    assert seen == list(range(model.config.num_hidden_layers))


@pytest.mark.parametrize("heads", [None, [0, 3]])
@pytest.mark.parametrize("padding", ["left", "right"])
@pytest.mark.parametrize("builder", [tiny_llama, tiny_qwen2])
def test_knockout_equals_hiding_the_keys_from_the_last_row(builder, padding, heads):
    """Knocking the label tokens out of some heads' last row = an eager model whose per-head 4-D mask hides
    those keys from the last real query only (transformers' own masking path, not ours)."""
    prompts = fake_prompts(4, k=3, seed=2)
    batch = collate(prompts, 0)  # left-padded
    ids, mask, labels = batch.input_ids, batch.attention_mask.bool(), batch.label_positions
    if padding == "right":  # shift every row's real tokens to the front
        shift = (~mask).sum(1)
        ids = torch.stack([row.roll(-int(n)) for row, n in zip(ids, shift, strict=True)])
        mask = torch.stack([row.roll(-int(n)) for row, n in zip(mask, shift, strict=True)])
        labels = labels - shift[:, None]
    last = last_real_index(mask)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    at = torch.zeros_like(mask).scatter(1, labels, True)  # every demonstration label token
    correct, wrong = label_position_masks(batch)
    assert torch.equal(correct | wrong, torch.zeros_like(mask).scatter(1, batch.label_positions, True))
    for p, good in zip(prompts, correct, strict=True):
        shift = len(good) - len(p.input_ids)
        assert good.nonzero()[:, 0].tolist() == [
            i + shift for i, y in zip(p.label_positions, p.demo_labels, strict=True) if y == p.gold
        ]
    model, eager = builder("sdpa"), builder("eager")
    use_last_row_attention(model)
    edit, _ = _heads_edit(lambda p: edit_rows(p, at, torch.zeros_like(at), "knockout"), heads)
    rows = torch.arange(len(prompts))
    with torch.no_grad(), edit_last_row(model, edit, last if padding == "right" else None):
        logits = model(input_ids=ids, attention_mask=mask.long(), position_ids=positions).logits[rows, last]
    length, num_heads = ids.shape[1], model.config.num_attention_heads
    allowed = torch.tril(torch.ones(length, length, dtype=torch.bool))[None, None] & mask[:, None, None, :]
    allowed = allowed.expand(-1, num_heads, -1, -1).clone()
    for b in range(len(prompts)):
        for h in heads if heads is not None else range(num_heads):
            allowed[b, h, last[b]] &= ~at[b]
    bias = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    with torch.no_grad():
        reference = eager(input_ids=ids, attention_mask=bias, position_ids=positions).logits[rows, last]
        unedited = eager(input_ids=ids, attention_mask=mask.long(), position_ids=positions).logits[rows, last]
    assert (logits - reference).abs().max().item() < TOL
    assert (logits - unedited).abs().max().item() > 1e-3  # the edit did change something


def test_one_editor_over_forwards_of_different_lengths():
    """The last position is found per forward (a cached index from a shorter forward would edit a wrong one)."""
    model = tiny_llama("sdpa")
    use_last_row_attention(model)
    edit, _ = _heads_edit(lambda p: torch.full_like(p, 1.0 / p.shape[-1]))  # uniform rows: a visible change
    short, long = torch.randint(3, 100, (2, 6)), torch.randint(3, 100, (2, 10))
    with torch.no_grad():
        expected = []
        for ids in (short, long):
            with edit_last_row(model, edit):
                expected.append(model(input_ids=ids).logits)
        with edit_last_row(model, edit):
            got = [model(input_ids=ids).logits for ids in (short, long)]
    for a, b in zip(got, expected, strict=True):
        assert (a - b).abs().max().item() == 0.0
    with pytest.raises(RuntimeError, match="torch.no_grad"), edit_last_row(model, edit):
        pass


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
    """On a 1-layer model (an edit cannot change later rows) the filter edits exactly the heads ABFT's
    objective counts as induction heads; 'all' edits every head; 'none' is the plain model."""
    model = tiny_llama("sdpa", num_hidden_layers=1)
    prompts = fake_prompts(10, k=1, seed=3)  # k=1: a low threshold, so some heads pass
    objective = ABFTObjective()
    probs, per_prompt = edited_scores(model, prompts, 0, [10, 11], "drop", "filter", objective, batch_size=4)
    rate = head_statistics(model, prompts, 0, objective)["induction_rate"]
    assert per_prompt == pytest.approx(rate.sum(), abs=1e-9) and 0 < per_prompt < model.config.num_attention_heads
    assert np.allclose(probs.sum(1), 1.0)
    _, every = edited_scores(model, prompts, 0, [10, 11], "drop", "all", objective)
    assert every == model.config.num_attention_heads
    plain, none = edited_scores(model, prompts, 0, [10, 11], "none", "filter", objective)
    assert none == 0 and not np.allclose(plain, probs)
    unfiltered = ABFTObjective(head_filter=False)
    _, every = edited_scores(model, prompts, 0, [10, 11], "drop", "filter", unfiltered)
    assert every == model.config.num_attention_heads


def test_ceiling_command(tiny_word_model_dir, tmp_path):
    out = tmp_path / "ceiling"
    args = ["ceiling", "--model", str(tiny_word_model_dir), "--dataset", "sst2", "--k", "2", "--samples", "12"]
    assert main([*args, "--edits", "knockout", "move", "none", "knockout", "--output", str(out)]) == 0
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
    assert result["rows"][0]["edit"] == "none" and len(result["rows"]) == 5
    before = (out / "ceiling.json").read_bytes()
    assert main([*args, "--output", str(out)]) == 2  # ceiling.json exists, and stays as it was
    assert (out / "ceiling.json").read_bytes() == before
    for bad in (["--samples", "0"], ["--k", "0"], ["--batch-size", "0"]):
        assert main([*args, *bad, "--output", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()
