import pytest

from abft.control import PenaltyController


def test_pid_recurrence_on_known_sequence():
    c = PenaltyController("pid", penalty=0.5, pid=(0.03, 0.005, 0.005))
    heads = [10.0, 12.0, 15.0, 14.0]
    assert c.update(heads[0]) == 0.5  # t = 1: no update
    assert c.update(heads[1]) == 0.5  # t = 2: no update
    # t = 3: 0.03*(15-12) + 0.005*(15-10) + 0.005*(15-24+10) = 0.09 + 0.025 + 0.005
    assert c.update(heads[2]) == pytest.approx(0.5 + 0.12)
    # t = 4: 0.03*(14-15) + 0.005*(14-10) + 0.005*(14-30+12) = -0.03 + 0.02 - 0.02
    assert c.update(heads[3]) == pytest.approx(0.62 - 0.03)


def test_pid_integral_matches_unrolled_sum():
    """The I term is Ci * sum_{i=2..t}(n_i - n_{i-1}); check the telescoped form against the sum."""
    seq = [3.0, 7.0, 2.0, 9.0, 4.0, 4.0, 11.0]
    cp, ci, cd = 0.03, 0.005, 0.005
    c = PenaltyController("pid", penalty=1.0, pid=(cp, ci, cd), clamp=False)
    expected = 1.0
    for t, n in enumerate(seq, start=1):
        got = c.update(n)
        if t > 2:
            integral = sum(seq[i] - seq[i - 1] for i in range(1, t))
            expected += cp * (seq[t - 1] - seq[t - 2]) + ci * integral + cd * (seq[t - 1] - 2 * seq[t - 2] + seq[t - 3])
        assert got == pytest.approx(expected)


def test_p_mode_and_none_mode():
    p = PenaltyController("p", penalty=0.5, p_factor=0.1)
    for n in (4.0, 6.0, 9.0):
        a = p.update(n)
    assert a == pytest.approx(0.5 + 0.1 * 3)
    fixed = PenaltyController("none", penalty=0.5)
    assert [fixed.update(n) for n in (1.0, 50.0, 3.0)] == [0.5, 0.5, 0.5]


def test_clamp_keeps_penalty_non_negative():
    c = PenaltyController("p", penalty=0.1, p_factor=1.0)
    for n in (10.0, 10.0, 0.0):
        a = c.update(n)
    assert a == 0.0
    free = PenaltyController("p", penalty=0.1, p_factor=1.0, clamp=False)
    for n in (10.0, 10.0, 0.0):
        a = free.update(n)
    assert a == pytest.approx(-9.9)


def test_state_round_trip():
    c = PenaltyController("pid")
    for n in (5.0, 8.0, 13.0):
        c.update(n)
    d = PenaltyController("pid")
    d.load_state_dict(c.state_dict())
    assert d.update(2.0) == c.update(2.0)
