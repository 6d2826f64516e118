"""Tests of abft.attention: last-row attention capture against eager attention on tiny random models."""

from __future__ import annotations

import functools

import pytest
import torch
from tiny_models import GEMMA_SLIDING_WINDOW, tiny_gemma3, tiny_gpt2, tiny_llama, tiny_qwen2
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from abft.attention import (
    ATTN_IMPLEMENTATION,
    capture_last_row,
    implementation,
    last_real_index,
    switch,
    use_last_row_attention,
)
from abft.errors import UserError

TOL = 1e-5
BATCH, LENGTH = 3, 12

BUILDERS = {
    "llama": tiny_llama,
    "qwen2": tiny_qwen2,
    "gemma3": tiny_gemma3,
    "gpt2": tiny_gpt2,
    # Per-layer scaling (1 / sqrt(d) / (layer_idx + 1)) exercises the `scaling` keyword.
    "gpt2_layer_scaled": functools.partial(tiny_gpt2, scale_attn_by_inverse_layer_idx=True),
}
MODELS = list(BUILDERS)
PADDINGS = ["none", "left", "right", "none_last_index"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread; two threads on a shared 2-core box are ~5x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _ours(name):
    model = BUILDERS[name]("sdpa")
    use_last_row_attention(model)
    return model


def _batch(padding: str, seed: int = 0):
    """(input_ids, attention_mask, last_index or None, last positions) for a (3, 12) batch."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, 100, (BATCH, LENGTH), generator=generator)
    mask = torch.ones(BATCH, LENGTH, dtype=torch.long)
    last_index = None
    if padding == "left":
        mask[1, :3] = 0
        mask[2, :5] = 0
    elif padding == "right":
        mask[1, 9:] = 0
        mask[2, 7:] = 0
        last_index = last_real_index(mask)
    elif padding == "none_last_index":  # no padding (mask-free SDPA path) but an earlier "last" token
        last_index = torch.tensor([11, 8, 5])
    input_ids = input_ids.masked_fill(mask == 0, 0)
    positions = last_index if last_index is not None else torch.full((BATCH,), LENGTH - 1)
    return input_ids, mask, last_index, positions


def _eager_rows(attentions, positions) -> torch.Tensor:
    """(B, L, H, T) last real rows of eager attention matrices."""
    batch = torch.arange(positions.shape[0])
    return torch.stack([layer[batch, :, positions, :] for layer in attentions], dim=1)


def _qk_grads(model) -> dict[str, torch.Tensor]:
    keys = ("q_proj", "k_proj", "c_attn")
    return {
        name: param.grad.clone()
        for name, param in model.named_parameters()
        if any(key in name for key in keys) and param.grad is not None
    }


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("name", MODELS)
def test_rows_and_logits_match_eager(name, padding):
    eager, sdpa, ours = BUILDERS[name]("eager"), BUILDERS[name]("sdpa"), _ours(name)
    input_ids, mask, last_index, positions = _batch(padding)
    with torch.no_grad():
        reference = eager(input_ids=input_ids, attention_mask=mask, output_attentions=True)
        plain = sdpa(input_ids=input_ids, attention_mask=mask)
        with capture_last_row(ours, last_index) as capture:
            output = ours(input_ids=input_ids, attention_mask=mask)
    assert ours.config._attn_implementation == ATTN_IMPLEMENTATION
    probs = capture.probs
    num_layers = len(reference.attentions)
    num_heads = reference.attentions[0].shape[1]
    assert probs.shape == (BATCH, num_layers, num_heads, LENGTH)
    assert probs.dtype == torch.float32
    assert capture.layer_indices == list(range(num_layers))
    expected = _eager_rows(reference.attentions, positions)
    assert (probs - expected).abs().max().item() < TOL
    # Rows are distributions over real, visible keys only.
    assert torch.allclose(probs.sum(-1), torch.ones_like(probs.sum(-1)), atol=1e-5)
    padded = (mask == 0)[:, None, None, :].expand_as(probs)
    if padded.any():
        assert probs[padded].abs().max().item() == 0.0
    # Model output unchanged (real positions; padded positions are undefined).
    real = mask.bool()
    assert (output.logits - reference.logits)[real].abs().max().item() < TOL
    assert (output.logits - plain.logits)[real].abs().max().item() < TOL


@pytest.mark.parametrize("padding", ["left", "right", "none_last_index"])
@pytest.mark.parametrize("name", MODELS)
def test_gradients_match_eager(name, padding):
    eager, ours = BUILDERS[name]("eager"), _ours(name)
    input_ids, mask, last_index, positions = _batch(padding, seed=1)
    num_layers = eager.config.num_hidden_layers
    weights = torch.randn(BATCH, num_layers, 4, LENGTH, generator=torch.Generator().manual_seed(2))

    reference = eager(input_ids=input_ids, attention_mask=mask, output_attentions=True)
    (_eager_rows(reference.attentions, positions) * weights).sum().backward()
    expected = _qk_grads(eager)

    with capture_last_row(ours, last_index) as capture:
        ours(input_ids=input_ids, attention_mask=mask)
    (capture.probs * weights).sum().backward()
    got = _qk_grads(ours)

    assert sorted(got) == sorted(expected) and len(expected) >= 2 * num_layers
    scale = max(grad.abs().max().item() for grad in expected.values())
    assert scale > 1e-3  # the loss really reaches the projections
    for key, grad in expected.items():
        assert (got[key] - grad).abs().max().item() < TOL, key


def test_gemma3_sliding_window_matters():
    eager, ours = tiny_gemma3("eager"), _ours("gemma3")
    assert eager.config.layer_types == ["sliding_attention", "full_attention"]
    input_ids, mask, _, positions = _batch("none")
    with torch.no_grad():
        reference = eager(input_ids=input_ids, attention_mask=mask, output_attentions=True)
        with capture_last_row(ours) as capture:
            ours(input_ids=input_ids, attention_mask=mask)
    rows = _eager_rows(reference.attentions, positions)
    outside = LENGTH - GEMMA_SLIDING_WINDOW  # keys 0 .. outside-1 lie beyond the window of the last token
    assert rows[:, 0, :, :outside].abs().max().item() == 0.0  # sliding layer
    assert rows[:, 0, :, outside:].min().item() > 0.0
    assert rows[:, 1, :, :outside].min().item() > 0.0  # full-attention layer sees everything
    assert capture.probs[:, 0, :, :outside].abs().max().item() == 0.0
    assert (capture.probs - rows).abs().max().item() < TOL


def test_gradient_checkpointing_non_reentrant_matches_and_records_once():
    input_ids, mask, _, _ = _batch("left", seed=3)
    weights = torch.randn(BATCH, 2, 4, LENGTH, generator=torch.Generator().manual_seed(4))
    results = []
    for checkpointing in (False, True):
        model = _ours("llama").train()
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        with capture_last_row(model) as capture:
            model(input_ids=input_ids, attention_mask=mask, use_cache=False)
            (capture.probs * weights).sum().backward()  # recomputation happens inside the capture
        assert len(capture.rows) == 2
        results.append(_qk_grads(model))
    plain, checkpointed = results
    assert sorted(plain) == sorted(checkpointed)
    for key in plain:
        assert (plain[key] - checkpointed[key]).abs().max().item() < TOL, key


def test_reentrant_checkpointing_is_refused():
    model = _ours("llama").train()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    with pytest.raises(UserError, match="use_reentrant"):
        with capture_last_row(model):
            pass


def test_nothing_recorded_or_computed_outside_a_capture(monkeypatch):
    model = _ours("llama")
    calls = []
    original = capture_last_row._compute

    def spy(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(capture_last_row, "_compute", spy)
    input_ids, mask, _, _ = _batch("left")
    unused = capture_last_row(model)
    model(input_ids=input_ids, attention_mask=mask)
    assert calls == [] and unused.rows == []
    with capture_last_row(model) as capture:
        model(input_ids=input_ids, attention_mask=mask)
    assert len(calls) == 2
    first = capture.probs
    model(input_ids=input_ids, attention_mask=mask)  # after exit
    assert len(calls) == 2 and len(capture.rows) == 2 and capture.probs is first
    with pytest.raises(RuntimeError, match="no attention rows"):
        _ = unused.probs


def test_other_model_in_capture_is_ignored():
    model, other = _ours("llama"), _ours("qwen2")
    input_ids, mask, _, _ = _batch("none")
    with torch.no_grad(), capture_last_row(model) as capture:
        other(input_ids=input_ids, attention_mask=mask)
        model(input_ids=input_ids, attention_mask=mask)
    assert len(capture.rows) == 2


def test_two_forwards_in_one_capture_and_nesting_raise():
    model = _ours("llama")
    input_ids, mask, _, _ = _batch("none")
    with torch.no_grad(), capture_last_row(model):
        model(input_ids=input_ids, attention_mask=mask)
        with pytest.raises(RuntimeError, match="twice"):
            model(input_ids=input_ids, attention_mask=mask)
    with capture_last_row(model), pytest.raises(RuntimeError, match="nested"):
        with capture_last_row(model):
            pass


def test_bad_last_index_raises():
    model = _ours("llama")
    input_ids, mask, _, _ = _batch("none")
    with pytest.raises(ValueError):
        capture_last_row(model, torch.tensor([1.0, 2.0, 3.0]))
    with torch.no_grad(), pytest.raises(ValueError, match="entries"):
        with capture_last_row(model, torch.tensor([1, 2])):
            model(input_ids=input_ids, attention_mask=mask)
    with torch.no_grad(), pytest.raises(ValueError, match="lie in"):
        with capture_last_row(model, torch.tensor([1, 2, LENGTH])):
            model(input_ids=input_ids, attention_mask=mask)


def test_use_last_row_attention_registers_and_is_idempotent(monkeypatch):
    model = tiny_llama("eager")
    use_last_row_attention(model)
    assert model.config._attn_implementation == ATTN_IMPLEMENTATION
    # masking_utils builds no mask for unknown names: ours must map to the SDPA mask builder.
    assert ALL_MASK_ATTENTION_FUNCTIONS[ATTN_IMPLEMENTATION] is sdpa_mask
    probes = []
    monkeypatch.setattr(switch, "_probe", lambda m: probes.append(m))
    use_last_row_attention(model)
    assert probes == []


def test_use_last_row_attention_preserves_training_mode():
    model = tiny_llama("eager").train()
    use_last_row_attention(model)
    assert all(module.training for module in model.modules())


def test_architecture_not_routing_through_interface_raises():
    with pytest.raises(UserError):
        use_last_row_attention(torch.nn.Linear(2, 2))

    model = tiny_llama("eager")
    for layer in model.model.layers:  # attention that bypasses the AttentionInterface
        layer.self_attn.forward = lambda hidden_states, **kwargs: (torch.zeros_like(hidden_states), None)
    with pytest.raises(UserError, match="AttentionInterface"):
        use_last_row_attention(model)


def test_softcap_is_refused():
    model = _ours("llama")
    module = model.model.layers[0].self_attn
    tensor = torch.zeros(1, 4, 3, 8)
    kv = torch.zeros(1, 2, 3, 8)
    with pytest.raises(UserError, match="soft-capping"):
        implementation._last_row_attention_forward(module, tensor, kv, kv, None, scaling=1.0, softcap=30.0)


def test_last_real_index():
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]])
    assert last_real_index(mask).tolist() == [3, 1, 2, 3]


def test_peft_lora_model_gets_gradients():
    peft = pytest.importorskip("peft")
    base = tiny_llama("sdpa")
    model = peft.get_peft_model(
        base, peft.LoraConfig(r=4, target_modules=["q_proj", "k_proj"], init_lora_weights=False)
    )
    use_last_row_attention(model)
    assert base.config._attn_implementation == ATTN_IMPLEMENTATION
    input_ids, mask, _, _ = _batch("left")
    with capture_last_row(model) as capture:
        model(input_ids=input_ids, attention_mask=mask)
    capture.probs[:, :, :, -1].sum().backward()
    lora = [param for name, param in model.named_parameters() if "lora_" in name]
    assert lora and all(param.grad is not None and param.grad.abs().max() > 0 for param in lora)
