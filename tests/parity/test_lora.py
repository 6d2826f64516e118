"""LoRA on W_Q/W_K (abft.models.lora), gradient checkpointing and --quantized's error on a CPU machine."""

import importlib.util

import pytest
import torch
from fake_prompts import LABEL_TOKENS, fake_prompts
from tiny_models import tiny_gpt2, tiny_llama

from abft.config import TrainConfig
from abft.errors import UserError
from abft.models.arch import find_qk_slices
from abft.models.lora import add_lora, has_lora, merge_adapter, save_adapter
from abft.models.weights import load_delta, save_trained, trained_tensors
from abft.train import train

BUILDERS = {"llama": tiny_llama, "gpt2": tiny_gpt2}
CFG = dict(lr=2e-2, pseudo_batch_size=4, micro_batch_size=2, epochs=1, head_filter=False, lora_r=4)


def _ids():
    return torch.tensor([fake_prompts(1, seed=5)[0].input_ids])


def _lora_trained(arch, method="abft"):
    model = BUILDERS[arch]("sdpa")
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, fake_prompts(8), TrainConfig(method=method, **CFG), pad_id=0, label_token_ids=LABEL_TOKENS)
    return model, base


@pytest.mark.parametrize("arch, method", [("llama", "abft"), ("gpt2", "e2e")])
def test_only_adapters_change_and_fused_v_is_never_adapted(arch, method):
    model, base = _lora_trained(arch, method)
    assert has_lora(model)
    changed_adapters = 0
    for name, p in model.named_parameters():
        if "lora_" in name:
            changed_adapters += "lora_B" in name and bool(p.abs().sum() > 0)
            continue
        assert torch.equal(p, base[name.replace(".base_layer", "")]), f"{name} changed"
    assert changed_adapters == {"llama": 4, "gpt2": 2}[arch]  # q_proj and k_proj, or c_attn, of 2 layers
    if arch == "gpt2":
        for layer in model.transformer.h:
            b = layer.attn.c_attn.lora_B["default"].weight  # (3 * 32, r): rows Q | K | V
            assert b[:64].abs().sum() > 0 and torch.equal(b[64:], torch.zeros_like(b[64:]))
    # the report's qk_shift sees the effective W_Q/W_K (base + LoRA update): every slice moved
    effective = trained_tensors(model, find_qk_slices(model))
    for s in find_qk_slices(model):
        base_slice = base[s.param.replace(".base_layer", "")].narrow(s.out_dim, s.start, s.stop - s.start)
        assert not torch.equal(effective[f"{s.param}@{s.kind}"], base_slice)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_merged_equals_unmerged_and_saved_adapter_reloads_in_peft(tmp_path, arch):
    from peft import PeftModel

    model, _ = _lora_trained(arch)
    ids = _ids()
    with torch.no_grad():
        unmerged = model(ids).logits
    saved = save_trained(model, tmp_path)  # a run directory: adapter/, no delta.safetensors
    assert saved == tmp_path / "adapter" and not (tmp_path / "delta.safetensors").exists()
    assert {p.name for p in saved.iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}

    reloaded = PeftModel.from_pretrained(BUILDERS[arch]("sdpa"), str(saved))  # what a user does
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, unmerged, atol=1e-6)

    effective = trained_tensors(model, find_qk_slices(model))
    merged = BUILDERS[arch]("sdpa")
    load_delta(merged, tmp_path)  # a run directory with adapter/: merged into W_Q/W_K
    assert not has_lora(merged)
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, unmerged, atol=1e-5)
    plain = trained_tensors(merged, find_qk_slices(merged))
    assert {k.replace(".base_layer", "") for k in effective} == set(plain)
    for key, value in effective.items():
        assert torch.allclose(value, plain[key.replace(".base_layer", "")], atol=1e-6), key


def test_adapter_does_not_load_onto_another_architecture(tmp_path):
    model, _ = _lora_trained("llama")
    save_adapter(model, tmp_path / "adapter")
    with pytest.raises(UserError):
        merge_adapter(tiny_gpt2("sdpa"), tmp_path / "adapter")


def test_lora_config_targets_exactly_query_and_key(tmp_path):
    model = add_lora(tiny_llama("sdpa"), r=2)
    lora = {n for n, m in model.named_modules() if hasattr(m, "lora_A")}
    assert lora == {f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "k_proj")}
    with pytest.raises(UserError, match="restricted_gradient"):
        train(model, fake_prompts(2), TrainConfig(lora_r=2, restricted_gradient=True), 0, LABEL_TOKENS)


def test_gradient_checkpointing_is_used_and_gives_the_same_step():
    prompts = fake_prompts(8)
    cfg = TrainConfig(lr=1e-2, pseudo_batch_size=4, micro_batch_size=2, epochs=1, head_filter=False)
    plain = tiny_llama("sdpa")
    train(plain, prompts, cfg, pad_id=0, label_token_ids=LABEL_TOKENS)
    model, seen, calls = tiny_llama("sdpa"), [], []
    import transformers.modeling_utils as hf

    original = hf.checkpoint

    def spy(*args, **kwargs):
        calls.append(kwargs.get("use_reentrant"))
        return original(*args, **kwargs)

    def on_step(record):
        seen.append([layer.gradient_checkpointing for layer in model.model.layers])

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hf, "checkpoint", spy)
        cfg_gc = TrainConfig(**{**cfg.__dict__, "gradient_checkpointing": True})
        train(model, prompts, cfg_gc, 0, LABEL_TOKENS, on_step=on_step)
    assert seen == [[True, True]] * 2  # during both steps
    assert not any(layer.gradient_checkpointing for layer in model.model.layers)  # off again afterwards
    assert len(calls) == 2 * 2 * 2 and set(calls) == {False}  # non-reentrant; 2 layers x 2 micro-batches x 2 steps
    a, b = trained_tensors(plain, find_qk_slices(plain)), trained_tensors(model, find_qk_slices(model))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6


@pytest.mark.skipif(
    torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None,
    reason="this machine has the 4-bit backend",
)
def test_quantized_without_backend_is_a_user_error_with_status_2(tmp_path, capsys):
    from abft.cli import main

    out = tmp_path / "run"
    status = main(["run", "--quantized", "--dataset", "sst2", "--train-samples", "4", "--output", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and err[0].startswith("abft: error: --quantized")
    if importlib.util.find_spec("bitsandbytes") is None:
        assert "the bitsandbytes package" in err[0]
    if not torch.cuda.is_available():
        assert "a CUDA GPU" in err[0]
    assert not out.exists()  # nothing written, nothing loaded
