"""Learning-rate schedules (mmfuse.training.loop.lr_factor)."""

from __future__ import annotations

import math

import pytest

from mmfuse.training.loop import lr_factor


def test_warmup_is_linear_then_cosine_decays_to_zero():
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, "cosine") == pytest.approx(0.0)


def test_onecycle_decays_linearly_and_constant_stays():
    assert lr_factor(50, 100, 0, "onecycle") == pytest.approx(0.5)
    assert lr_factor(50, 100, 0, "constant", time_used=0.9) == 1.0


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
def test_decay_follows_the_time_budget_when_it_runs_out_first(schedule):
    by_steps = lr_factor(10, 100, 0, schedule)
    assert lr_factor(10, 100, 0, schedule, time_used=0.05) == pytest.approx(by_steps)
    half = lr_factor(10, 100, 0, schedule, time_used=0.5)
    assert half == pytest.approx(0.5)
    assert lr_factor(10, 100, 0, schedule, time_used=1.3) == pytest.approx(0.0)
    assert math.isfinite(half)
