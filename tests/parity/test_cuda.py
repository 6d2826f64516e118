"""The GPU code paths (marked `cuda`, skipped without a CUDA GPU; `benchmarks/gpu.py` runs them on one).

Last-row capture against eager attention in bf16, fp16 and fp32 on the tiny models of test_attention, with its
batches and helpers; LoRA, --restricted-gradient, a bf16 training step and --quantized (bitsandbytes) on CUDA.

Tolerances per dtype (max |difference| of probabilities; relative Frobenius difference of W_Q/W_K gradients).
Both sides are the same model in the same dtype; eager rounds its probabilities to the dtype and multiplies q and
k in it, ours computes the row in fp32 from the same q and k, so the difference is the dtype's rounding of
scores of size ~10 (bf16 keeps 8 bits: ~4e-3 relative, fp16 11 bits: ~5e-4), carried through two layers. Measured
with these functions on CPU in the same dtypes (largest over models and paddings, 2026-11-30): bf16 rows 1.2e-2,
gradients 3.5e-2; fp16 rows 2.1e-3, gradients 2.5e-3; fp32 3.6e-7 and 7.5e-7; logits identical to plain SDPA's in
every dtype. The tolerances leave about 3x for CUDA's other kernels.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from fake_prompts import LABEL_TOKENS, fake_prompts
from test_attention import BATCH, BUILDERS, LENGTH, PADDINGS, _batch, _eager_rows, _qk_grads
from test_lora import CFG as LORA_CFG
from tiny_models import snapshot

from abft.analysis.heads import head_statistics
from abft.attention import capture_last_row, use_last_row_attention
from abft.config import TrainConfig
from abft.models.arch import find_qk_slices
from abft.train import train

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ROW_TOL = {"fp32": 1e-5, "bf16": 5e-2, "fp16": 6e-3}
GRAD_TOL = {"fp32": 1e-4, "bf16": 1e-1, "fp16": 8e-3}
DEVICE = "cuda"  # a dry run of these tests on CPU sets this to "cpu"
MODELS = list(BUILDERS)


def _pair(name: str, dtype: str, device: str):
    """(eager model, our model), the same weights, on `device` in `dtype`."""
    eager = BUILDERS[name]("eager").to(device, DTYPES[dtype])
    ours = BUILDERS[name]("sdpa").to(device, DTYPES[dtype])
    use_last_row_attention(ours)
    return eager, ours


def row_error(name: str, padding: str, dtype: str, device: str = DEVICE) -> tuple[float, float]:
    """Max |our captured rows - eager's| and max |our logits - plain SDPA's| (real positions)."""
    eager, ours = _pair(name, dtype, device)
    plain = BUILDERS[name]("sdpa").to(device, DTYPES[dtype])
    input_ids, mask, last_index, positions = (t if t is None else t.to(device) for t in _batch(padding))
    with torch.no_grad():
        reference = eager(input_ids=input_ids, attention_mask=mask, output_attentions=True)
        expected_logits = plain(input_ids=input_ids, attention_mask=mask).logits
        with capture_last_row(ours, last_index) as capture:
            logits = ours(input_ids=input_ids, attention_mask=mask).logits
    assert capture.probs.dtype == torch.float32 and capture.probs.shape[0] == BATCH
    expected = _eager_rows(reference.attentions, positions).float()
    real = mask.bool()
    return (capture.probs - expected).abs().max().item(), (logits - expected_logits)[real].abs().max().item()


def grad_error(name: str, padding: str, dtype: str, device: str = DEVICE) -> float:
    """Relative Frobenius difference of our W_Q/W_K gradients from eager's, for one weighted sum of the rows."""
    eager, ours = _pair(name, dtype, device)
    input_ids, mask, last_index, positions = (t if t is None else t.to(device) for t in _batch(padding, seed=1))
    layers = eager.config.num_hidden_layers
    weights = torch.randn(BATCH, layers, 4, LENGTH, generator=torch.Generator().manual_seed(2)).to(device)
    reference = eager(input_ids=input_ids, attention_mask=mask, output_attentions=True)
    (_eager_rows(reference.attentions, positions).float() * weights).sum().backward()
    with capture_last_row(ours, last_index) as capture:
        ours(input_ids=input_ids, attention_mask=mask)
    (capture.probs * weights).sum().backward()
    expected, got = _qk_grads(eager), _qk_grads(ours)
    assert sorted(got) == sorted(expected) and expected
    diff = sum(((got[k].float() - g.float()) ** 2).sum() for k, g in expected.items()) ** 0.5
    return (diff / sum((g.float() ** 2).sum() for g in expected.values()) ** 0.5).item()


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("name", MODELS)
def test_rows_match_eager_and_output_is_sdpas(name, padding, dtype):
    rows, logits = row_error(name, padding, dtype)
    assert rows < ROW_TOL[dtype]
    assert logits == 0.0  # the model's output is sdpa_attention_forward's, untouched


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("padding", ["left", "right"])
@pytest.mark.parametrize("name", MODELS)
def test_gradients_match_eager(name, padding, dtype):
    assert grad_error(name, padding, dtype) < GRAD_TOL[dtype]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_lora_trains_only_adapters_on_cuda(arch):
    model = BUILDERS[arch]("sdpa").to(DEVICE)
    base = snapshot(model)
    train(model, fake_prompts(8), TrainConfig(**LORA_CFG), pad_id=0, label_token_ids=LABEL_TOKENS)
    adapters = 0
    for name, p in model.named_parameters():
        if "lora_" in name:
            adapters += "lora_B" in name and bool(p.abs().sum() > 0)
        else:
            assert torch.equal(p, base[name.replace(".base_layer", "")]), name
    assert adapters == {"llama": 4, "gpt2": 2}[arch]


def test_restricted_gradient_on_cuda_moves_exactly_the_induction_heads():
    prompts = fake_prompts(16, k=3)
    model = BUILDERS["llama"]("sdpa").to(DEVICE)
    active = torch.from_numpy(head_statistics(model, prompts, 0)["induction_rate"] > 0)  # (L, Hq)
    assert active.any() and not active.all()
    before = snapshot(model)
    cfg = TrainConfig(lr=1e-2, pseudo_batch_size=16, epochs=1, restricted_gradient=True)
    train(model, prompts, cfg, pad_id=0, label_token_ids=LABEL_TOKENS)
    after = dict(model.named_parameters())
    for layer in range(2):
        for proj, groups in (("q_proj", active[layer]), ("k_proj", active[layer].view(2, 2).any(1))):
            name = f"model.layers.{layer}.self_attn.{proj}.weight"
            moved = (after[name] != before[name]).view(len(groups), 8, -1).flatten(1).any(1)
            assert moved.cpu().tolist() == groups.tolist(), name


@pytest.mark.parametrize("method", ["abft", "e2e"])
def test_bf16_step_changes_only_wq_wk(method):
    model = BUILDERS["qwen2"]("sdpa").to(DEVICE, torch.bfloat16)  # with q/k biases
    before = snapshot(model)
    cfg = TrainConfig(method=method, lr=1e-2, pseudo_batch_size=8, epochs=1, head_filter=False)
    records = train(model, fake_prompts(8), cfg, pad_id=0, label_token_ids=LABEL_TOKENS)
    assert all(torch.isfinite(torch.tensor(r.loss)) for r in records)
    trained = {s.param for s in find_qk_slices(model)} | {s.bias for s in find_qk_slices(model)}
    for name, p in model.named_parameters():
        assert p.dtype == torch.bfloat16
        if name in trained:
            assert not torch.equal(p, before[name]), f"{name} did not move"
        else:
            assert torch.equal(p, before[name]), f"{name} changed"


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes")
def test_quantized_tiny_model_trains_lora_on_a_4bit_base(tiny_word_model_dir):
    from abft.evaluation.scoring import score_prompts
    from abft.models import load_model

    model, _ = load_model(str(tiny_word_model_dir), device="cuda", quantized=True)
    q = model.model.layers[0].self_attn.q_proj
    assert type(q).__name__ == "Linear4bit"
    before = q.weight.detach().clone()
    cfg = TrainConfig(lr=1e-2, pseudo_batch_size=4, micro_batch_size=2, epochs=1, head_filter=False, lora_r=4)
    records = train(model, fake_prompts(8), cfg, pad_id=0, label_token_ids=LABEL_TOKENS)
    assert len(records) == 2 and all(torch.isfinite(torch.tensor(r.loss)) for r in records)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)
    assert torch.equal(model.model.layers[0].self_attn.q_proj.base_layer.weight, before)  # the 4-bit base is frozen
    probs = score_prompts(model, fake_prompts(4, seed=9), LABEL_TOKENS, 0)
    assert probs.shape == (4, 2) and abs(probs.sum(1) - 1).max() < 1e-6
