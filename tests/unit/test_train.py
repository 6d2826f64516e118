import torch
from fake_prompts import LABEL_TOKENS, fake_prompts
from tiny_models import tiny_llama

from abft.analysis.heads import head_statistics
from abft.config import TrainConfig
from abft.control import PenaltyController
from abft.models.arch import find_qk_slices
from abft.models.weights import trained_tensors
from abft.objectives import ABFTObjective
from abft.train import train


def _train(cfg, prompts, seed=0):
    model = tiny_llama()
    records = train(model, prompts, cfg, pad_id=0, label_token_ids=LABEL_TOKENS, seed=seed)
    return model, records


def test_abft_moves_attention_to_correct_labels():
    prompts = fake_prompts(16, k=4)
    cfg = TrainConfig(lr=3e-2, pseudo_batch_size=8, epochs=6, head_filter=False, adaptive_penalty="none")
    base = tiny_llama()
    before = head_statistics(base, prompts, 0, ABFTObjective())
    model, records = _train(cfg, prompts)
    after = head_statistics(model, prompts, 0, ABFTObjective())
    assert records[-1].loss < records[0].loss
    assert after["correct_mass"].mean() > before["correct_mass"].mean() + 0.05
    assert len(records) == 12 and all(r.examples == 8 for r in records)


def test_same_seed_same_delta_and_micro_batch_invariance():
    prompts = fake_prompts(12, k=3)
    cfg = TrainConfig(lr=1e-2, pseudo_batch_size=6, micro_batch_size=6, epochs=2, head_filter=False)
    a, _ = _train(cfg, prompts)
    b, _ = _train(cfg, prompts)
    ta, tb = trained_tensors(a, find_qk_slices(a)), trained_tensors(b, find_qk_slices(b))
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    cfg1 = TrainConfig(lr=1e-2, pseudo_batch_size=6, micro_batch_size=1, epochs=2, head_filter=False)
    c, _ = _train(cfg1, prompts)
    tc = trained_tensors(c, find_qk_slices(c))
    assert max(float((ta[k] - tc[k]).abs().max()) for k in ta) < 1e-4  # padding-order fp noise through Adam
    d, _ = _train(cfg, prompts, seed=1)
    td = trained_tensors(d, find_qk_slices(d))
    assert any(not torch.equal(ta[k], td[k]) for k in ta)


def test_pid_moves_penalty_with_head_count():
    prompts = fake_prompts(32, k=4)
    cfg = TrainConfig(lr=3e-2, pseudo_batch_size=4, epochs=1, pid=(1.0, 0.5, 0.5))
    _, records = _train(cfg, prompts)
    heads = [r.heads for r in records]
    penalties = [r.penalty for r in records]
    assert len(set(heads)) > 1 and len(set(penalties)) > 1
    replay = PenaltyController("pid", 0.5, pid=(1.0, 0.5, 0.5))
    expected = [0.5]
    for n in heads[:-1]:
        expected.append(replay.update(n))
    assert penalties == expected  # step t trains with the A computed after step t-1


def test_checkpoint_resume_equals_uninterrupted(tmp_path):
    prompts = fake_prompts(12, k=3)
    cfg = TrainConfig(lr=1e-2, pseudo_batch_size=4, micro_batch_size=2, epochs=2, head_filter=False)
    full, full_records = _train(cfg, prompts)
    # first run stops after 2 of 6 steps (simulated by a callback that raises), second resumes
    model = tiny_llama()

    class Stop(Exception):
        pass

    def stop_after_two(record):
        if record.step == 2:
            raise Stop

    try:
        train(model, prompts, cfg, 0, LABEL_TOKENS, on_step=stop_after_two, checkpoint_dir=tmp_path)
    except Stop:
        pass
    resumed = tiny_llama()
    seen, restored = [], []
    records = train(
        resumed, prompts, cfg, 0, LABEL_TOKENS, on_step=seen.append, on_resume=restored.append, checkpoint_dir=tmp_path
    )
    assert [r.step for r in seen] == [3, 4, 5, 6]
    assert [[r.step for r in rs] for rs in restored] == [[1, 2]]
    assert [r.loss for r in records] == [r.loss for r in full_records]
    ta, tb = trained_tensors(full, find_qk_slices(full)), trained_tensors(resumed, find_qk_slices(resumed))
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
