"""Direct W_Q/W_K training in bf16 / fp16 steps fp32 master copies (abft.precision): small updates are kept."""

import pytest
import torch
from fake_prompts import LABEL_TOKENS, fake_prompts
from tiny_models import tiny_llama

from abft.config import TrainConfig
from abft.models.arch import find_qk_slices
from abft.models.trainable import mark_trainable
from abft.models.weights import trained_tensors
from abft.train import train

CFG = dict(lr=2e-4, pseudo_batch_size=4, micro_batch_size=4, epochs=2, head_filter=False, adaptive_penalty="none")


def _qk(model):
    return {k: v.detach().double().clone() for k, v in trained_tensors(model, find_qk_slices(model)).items()}


def _update(dtype, tmp_path=None):
    model = tiny_llama().to(dtype)
    start = _qk(model)
    records = train(model, fake_prompts(16, k=3), TrainConfig(**CFG), 0, LABEL_TOKENS, checkpoint_dir=tmp_path)
    end = _qk(model)
    return {k: end[k] - start[k] for k in start}, records, model


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_training_follows_fp32(dtype):
    reference, _, _ = _update(torch.float32)
    update, records, model = _update(dtype)
    assert all(r.loss == r.loss for r in records)  # fp16: no 0/0 in Adam
    assert all(p.dtype == dtype for p in model.parameters())  # the model keeps its dtype
    # bf16 activations change the gradients, so compare sizes: without master copies half of the update's norm
    # rounds away (ratio 0.52, 22% of the entries move); with them 1.06 and 65% (fp16: NaN at step 2 without).
    norm = sum(float(update[k].norm() ** 2) for k in update) ** 0.5
    ref = sum(float(reference[k].norm() ** 2) for k in update) ** 0.5
    moved = sum(int((update[k] != 0).sum()) for k in update) / sum(update[k].numel() for k in update)
    assert 0.8 < norm / ref < 1.25 and moved > 0.5, (norm / ref, moved)


def test_checkpoint_holds_the_fp32_masters(tmp_path):
    from abft.checkpoint import load_checkpoint

    _, _, model = _update(torch.bfloat16, tmp_path)
    state = load_checkpoint(tmp_path)
    params = mark_trainable(model, find_qk_slices(model))  # the order training used
    assert len(state["params"]) == len(params) > 0
    for master, p in zip(state["params"], params, strict=True):
        assert master.dtype == torch.float32 and torch.equal(master.to(torch.bfloat16), p.detach())
