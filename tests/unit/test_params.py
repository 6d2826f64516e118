import pytest
import torch
from fake_prompts import LABEL_TOKENS, fake_prompts
from tiny_models import BUILDERS, tiny_gpt2, tiny_llama
from tiny_models import snapshot as _snapshot

from abft.analysis.heads import head_statistics
from abft.config import TrainConfig
from abft.errors import UserError
from abft.models.arch import find_qk_slices
from abft.models.trainable import mark_trainable
from abft.models.weights import load_delta, save_delta
from abft.train import train
from abft.train.setup import masked_backward


def test_slices_llama_and_gpt2():
    llama = find_qk_slices(tiny_llama())
    assert [(s.layer, s.kind, s.num_heads, s.stop - s.start) for s in llama] == [
        (0, "q", 4, 32),
        (0, "k", 2, 16),
        (1, "q", 4, 32),
        (1, "k", 2, 16),
    ]
    gpt2 = find_qk_slices(tiny_gpt2())
    assert {s.param for s in gpt2} == {"transformer.h.0.attn.c_attn.weight", "transformer.h.1.attn.c_attn.weight"}
    assert [(s.out_dim, s.start, s.stop) for s in gpt2[:2]] == [(1, 0, 32), (1, 32, 64)]


def test_unsupported_architecture_is_a_user_error():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    model.config = tiny_llama().config
    with pytest.raises(UserError, match="query/key projections"):
        find_qk_slices(model)


@pytest.mark.parametrize("arch", sorted(BUILDERS))
@pytest.mark.parametrize("method", ["abft", "e2e"])
def test_training_changes_only_query_and_key(arch, method):
    model = BUILDERS[arch]()
    before = _snapshot(model)
    slices = find_qk_slices(model)
    cfg = TrainConfig(method=method, lr=1e-2, pseudo_batch_size=4, micro_batch_size=2, epochs=1, head_filter=False)
    train(model, fake_prompts(8), cfg, pad_id=0, label_token_ids=LABEL_TOKENS)
    after = _snapshot(model)
    changed_qk = 0
    for name, value in after.items():
        mask = torch.zeros_like(value, dtype=torch.bool)
        for s in slices:
            if name == s.param:
                mask.narrow(s.out_dim, s.start, s.stop - s.start).fill_(True)
            if name == s.bias:
                mask.narrow(0, s.start, s.stop - s.start).fill_(True)
        assert torch.equal(value[~mask], before[name][~mask]), f"{name} changed outside Q/K"
        changed_qk += int((value[mask] != before[name][mask]).sum())
    assert changed_qk > 0, "no Q/K parameter was updated"


def test_restricted_gradient_masks_inactive_heads_and_groups():
    model = tiny_llama()
    slices = find_qk_slices(model)
    params = mark_trainable(model, slices)
    from abft.attention import capture_last_row, use_last_row_attention

    use_last_row_attention(model)
    prompt = fake_prompts(1)[0]
    ids = torch.tensor([prompt.input_ids])
    with capture_last_row(model) as cap:
        model.model(input_ids=ids)
    loss = cap.probs[..., prompt.label_positions].sum()
    active = torch.tensor([[True, False, False, False], [False, False, True, True]])  # (L, Hq)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert [p for _, p in named] == params
    masked_backward(loss, named, slices, active)
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    q0 = grads["model.layers.0.self_attn.q_proj.weight"].view(4, 8, -1)
    assert q0[0].abs().sum() > 0 and q0[1:].abs().sum() == 0
    k0 = grads["model.layers.0.self_attn.k_proj.weight"].view(2, 8, -1)  # query heads 0,1 -> key head 0
    assert k0[0].abs().sum() > 0 and k0[1].abs().sum() == 0
    k1 = grads["model.layers.1.self_attn.k_proj.weight"].view(2, 8, -1)  # query heads 2,3 -> key head 1
    assert k1[0].abs().sum() == 0 and k1[1].abs().sum() > 0
    q1 = grads["model.layers.1.self_attn.q_proj.weight"].view(4, 8, -1)
    assert q1[:2].abs().sum() == 0 and q1[2:].abs().sum() > 0


def test_restricted_gradient_training_moves_exactly_the_induction_heads():
    """One Adam step over 16 prompts: a head row moves iff the head was an induction head for some prompt."""
    prompts = fake_prompts(16, k=3)
    model = tiny_llama()
    active = torch.from_numpy(head_statistics(model, prompts, 0)["induction_rate"] > 0)  # (L, Hq)
    assert active.any() and not active.all()  # the test needs both kinds of heads
    before = _snapshot(model)
    cfg = TrainConfig(lr=1e-2, pseudo_batch_size=16, epochs=1, restricted_gradient=True)
    train(model, prompts, cfg, pad_id=0, label_token_ids=LABEL_TOKENS)
    after = dict(model.named_parameters())
    for layer in range(2):
        name = f"model.layers.{layer}.self_attn.q_proj.weight"
        moved = (after[name] != before[name]).view(4, 8, -1).flatten(1).any(1)
        assert moved.tolist() == active[layer].tolist()
        name = f"model.layers.{layer}.self_attn.k_proj.weight"
        moved = (after[name] != before[name]).view(2, 8, -1).flatten(1).any(1)
        assert moved.tolist() == active[layer].view(2, 2).any(1).tolist()  # a key head serves 2 query heads


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_save_and_load_delta_round_trip(tmp_path, arch):
    model = BUILDERS[arch]()
    cfg = TrainConfig(lr=1e-2, pseudo_batch_size=4, epochs=1, head_filter=False)
    train(model, fake_prompts(4), cfg, pad_id=0, label_token_ids=LABEL_TOKENS)
    save_delta(model, find_qk_slices(model), tmp_path / "delta.safetensors")
    fresh = BUILDERS[arch]()
    ids = torch.tensor([fake_prompts(1, seed=3)[0].input_ids])
    assert not torch.equal(fresh(ids).logits, model(ids).logits)
    load_delta(fresh, tmp_path)
    assert torch.allclose(fresh(ids).logits, model(ids).logits, atol=1e-5)  # eager vs our sdpa path
    for (n, a), (_, b) in zip(model.named_parameters(), fresh.named_parameters(), strict=True):
        assert torch.equal(a, b), n


def test_load_delta_at_its_old_readme_path():
    from abft.models import params

    assert params.load_delta is load_delta  # README.md gave abft.models.params before the split


def test_load_delta_onto_wrong_model_fails(tmp_path):
    model = tiny_gpt2()
    save_delta(model, find_qk_slices(model), tmp_path / "delta.safetensors")
    with pytest.raises(UserError, match="does not match"):
        load_delta(tiny_llama(), tmp_path)
    with pytest.raises(UserError, match="no trained weights"):
        load_delta(tiny_llama(), tmp_path / "missing")
