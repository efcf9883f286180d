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


def test_the_clock_leaves_the_decay_to_steps_while_the_run_fits_its_budget():
    from mmfuse.training.control import Clock

    clock = Clock(max_minutes=10)  # 600 s
    # 100 of 1,000 steps in 30 s: 300 s projected, within budget, whatever the load did
    assert clock.schedule_progress(100, 1000, used=30 / 600) == 0.0
    # 100 steps in 120 s: 1,200 s projected, so the decay follows the clock from here on
    assert clock.schedule_progress(100, 1000, used=120 / 600) == pytest.approx(0.2)
    # and never goes back down when the pace recovers (no learning-rate jump back up)
    assert clock.schedule_progress(900, 1000, used=0.5) == pytest.approx(0.2)
    assert Clock(max_minutes=None).schedule_progress(10, 100, used=5.0) == 0.0


def test_a_run_that_fits_its_max_minutes_learns_exactly_what_an_unlimited_run_does(
        shapes_qa, minimal_config, tmp_path, monkeypatch):
    """However slow the machine is, as long as the run is projected to finish in time: a
    time budget of a day with a clock that runs 50 times fast (load) changes nothing."""
    import json

    import mmfuse
    from mmfuse.training import control

    minimal_config["training"].update(epochs=3, lr_schedule="cosine")
    mmfuse.Model.from_config(minimal_config).fit(shapes_qa["en_train"], out=tmp_path / "a",
                                                 threads=1)
    real = control.time.perf_counter
    monkeypatch.setattr(control.time, "perf_counter", lambda: 50 * real())
    minimal_config["training"]["max_minutes"] = 24 * 60
    mmfuse.Model.from_config(minimal_config).fit(shapes_qa["en_train"], out=tmp_path / "b",
                                                 threads=1)
    keys = ("train_loss", "valid_loss", "learning_rate")
    runs = [[{k: json.loads(line)[k] for k in keys}
             for line in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
            for r in ("a", "b")]
    assert runs[0] == runs[1]
