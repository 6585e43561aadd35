"""CountSchedule: counts every step near a budget, far apart away from one, resumable."""

from __future__ import annotations

import pytest

from recdim.search.count_schedule import CountSchedule


def test_fixed_schedule_without_lookahead() -> None:
    sched = CountSchedule(every=3, lookahead=0.0)
    for step in (3, 6, 9):
        assert sched.due(step)
        assert sched.observe(step, 1000 - step, 10) == step + 3
    assert not sched.due(10) and not sched.due(11) and sched.due(12)


def test_gap_is_a_fraction_of_the_predicted_steps() -> None:
    sched = CountSchedule(every=2, lookahead=0.5, max_gap=40)
    assert sched.observe(10, 9_000, 5_000) == 12  # no rate yet
    # 50 values a step, 4,900 to go: 98 steps, half of it capped at 40
    assert sched.observe(12, 8_900, 4_000) == 52
    # 100 a step over the last 40 steps, 900 to go: 9 steps, half rounded down to the step multiple, 4
    assert sched.observe(52, 4_900, 4_000) == 56
    assert sched.observe(56, 4_100, 4_000) == 58  # near the budget: every `every` steps
    assert sched.observe(58, 3_900, 4_000) == 60  # at or past it (the hook snapshots it): every step again
    assert not sched.due(59) and sched.due(60)


def test_backs_off_while_the_count_does_not_fall() -> None:
    sched = CountSchedule(every=1, lookahead=0.5, max_gap=16)
    step, gaps = 0, []
    for _ in range(7):
        nxt = sched.observe(step, 1_000, 500)
        gaps.append(nxt - step)
        step = nxt
    assert gaps == [1, 2, 4, 8, 16, 16, 16]


def test_state_round_trip() -> None:
    a = CountSchedule(every=1, lookahead=0.5)
    a.observe(4, 1_000, 100)
    a.observe(5, 990, 100)
    b = CountSchedule(every=1, lookahead=0.5)
    b.load_state_dict(a.state_dict())
    assert b.observe(9, 950, 100) == a.observe(9, 950, 100)


@pytest.mark.parametrize("kwargs", [{"every": 0}, {"lookahead": 1.0}, {"lookahead": -0.1}, {"every": 4, "max_gap": 2}])
def test_bad_settings_name_the_field(kwargs) -> None:
    with pytest.raises(ValueError, match="pep\\."):
        CountSchedule(**kwargs)
