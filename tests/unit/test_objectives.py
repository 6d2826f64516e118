import math

import pytest
import torch

from abft.config import TrainConfig
from abft.objectives import ABFTObjective, e2e_loss


def _probs(rows):
    """rows: per head, a last-token attention row over T positions -> (1, 1, H, T)."""
    return torch.tensor(rows, dtype=torch.float32)[None, None]


def test_threshold_is_k_over_k_plus_ln_n():
    obj = ABFTObjective()
    t = obj.threshold(torch.tensor([4, 4]), torch.tensor([50, 200]))
    assert t.tolist() == pytest.approx([4 / (4 + math.log(50)), 4 / (4 + math.log(200))], abs=1e-6)
    assert t[0] == pytest.approx(0.5056, abs=1e-3)  # the method note: ~0.51 at 50 tokens
    t2 = ABFTObjective(log_base="2").threshold(torch.tensor([4]), torch.tensor([64]))
    assert float(t2) == pytest.approx(4 / (4 + 6), abs=1e-6)


def test_uncounted_bos_shortens_n_t():
    counted = ABFTObjective().threshold(torch.tensor([4]), torch.tensor([50]))
    uncounted = ABFTObjective(uncounted_tokens=1).threshold(torch.tensor([4]), torch.tensor([51]))
    assert float(uncounted) == pytest.approx(float(counted))
    cfg = TrainConfig(count_bos=False)
    assert ABFTObjective.from_config(cfg, prefix_tokens=1).uncounted_tokens == 1
    assert ABFTObjective.from_config(TrainConfig(), prefix_tokens=1).uncounted_tokens == 0


def test_loss_on_hand_computed_rows():
    # T = 8 tokens, k = 4 labels at positions 1, 3, 5, 7; labels [0, 1, 0, 1]; gold = 1.
    # threshold = 4 / (4 + ln 8) = 0.6579
    head_a = [0.0, 0.1, 0.0, 0.4, 0.0, 0.1, 0.0, 0.3]  # label mass 0.9 -> induction head
    head_b = [0.5, 0.1, 0.1, 0.1, 0.1, 0.0, 0.1, 0.0]  # label mass 0.2 -> not
    probs = _probs([head_a, head_b])
    pos = torch.tensor([[1, 3, 5, 7]])
    labels = torch.tensor([[0, 1, 0, 1]])
    gold = torch.tensor([1])
    obj = ABFTObjective()
    loss, heads = obj(probs, pos, labels, gold, torch.tensor([8]), penalty=0.5, reward=1.0)
    assert heads.tolist() == [[[True, False]]]
    # head a: A * (0.1 + 0.1) + B * ((1 - 0.4) + (1 - 0.3)) = 0.1 + 1.3
    assert float(loss) == pytest.approx(1.4, abs=1e-6)
    mean_loss, _ = ABFTObjective(head_reduction="mean")(probs, pos, labels, gold, torch.tensor([8]), 0.5, 1.0)
    assert float(mean_loss) == pytest.approx(1.4, abs=1e-6)
    # no filter: head b also counts: 0.5*(0.1+0.0) + ((1-0.1)+(1-0.0)) = 1.95
    all_loss, all_heads = ABFTObjective(head_filter=False)(probs, pos, labels, gold, torch.tensor([8]), 0.5, 1.0)
    assert bool(all_heads.all())
    assert float(all_loss) == pytest.approx(1.4 + 1.95, abs=1e-6)


def test_loss_without_correct_label_is_penalty_only_and_gradient_signs():
    row = torch.tensor([[0.0, 0.3, 0.0, 0.3, 0.0, 0.2, 0.0, 0.2]], requires_grad=True)
    probs = row[None, None]
    pos = torch.tensor([[1, 3, 5, 7]])
    labels = torch.tensor([[0, 0, 2, 2]])
    loss, _ = ABFTObjective()(probs, pos, labels, torch.tensor([1]), torch.tensor([8]), penalty=0.5, reward=1.0)
    assert float(loss) == pytest.approx(0.5, abs=1e-6)  # A * (0.3+0.3+0.2+0.2), no I+ term
    loss.backward()
    assert row.grad[0, 1] == pytest.approx(0.5) and row.grad[0, 0] == 0
    # with a correct label, its attention gets a negative gradient (the reward pulls it up)
    row2 = torch.tensor([[0.0, 0.3, 0.0, 0.3, 0.0, 0.2, 0.0, 0.2]], requires_grad=True)
    loss2, _ = ABFTObjective()(
        row2[None, None], pos, torch.tensor([[1, 0, 2, 1]]), torch.tensor([1]), torch.tensor([8]), 0.5, 1.0
    )
    loss2.backward()
    assert row2.grad[0, 1] == pytest.approx(-1.0) and row2.grad[0, 3] == pytest.approx(0.5)


def test_padding_labels_are_ignored():
    """A padded demonstration slot (label -1, position 0 after collate) is neither a wrong label nor label mass,
    even where the last token attends to the position it points at."""
    probs = _probs([[0.4, 0.3, 0.0, 0.3]])
    pos, labels, gold, lengths = torch.tensor([[1, 0]]), torch.tensor([[1, -1]]), torch.tensor([1]), torch.tensor([4])
    loss, _ = ABFTObjective(head_filter=False)(probs, pos, labels, gold, lengths, 0.5, 1.0)
    assert float(loss) == pytest.approx(1.0 - 0.3)  # B * (1 - 0.3); counted as wrong it would add A * 0.4
    # label mass 0.3 against k=1's threshold 1 / (1 + ln 4) = 0.42 (with the slot: mass 0.7, k=2)
    _, heads = ABFTObjective()(probs, pos, labels, gold, lengths, 0.5, 1.0)
    assert not bool(heads.any())


def test_e2e_loss_vocab_and_labels():
    logits = torch.tensor([[0.0, 2.0, 1.0, 0.0]])
    label_ids = torch.tensor([1, 2])
    ce = e2e_loss(logits, torch.tensor([1]), label_ids)
    assert float(ce) == pytest.approx(-torch.log_softmax(logits, -1)[0, 2].item())
    ce_labels = e2e_loss(logits, torch.tensor([1]), label_ids, over="labels")
    assert float(ce_labels) == pytest.approx(math.log(1 + math.e))
