"""A run's budget: steps planned by kind, the warm-up + cosine schedule, the wall-time cap."""

from __future__ import annotations

import itertools

import pytest

from prelabel.jobs import RunKind
from training.config import OptimConfig
from training.train import StepPlan, affordable_steps, learning_rate, plan_steps

OPTIM = OptimConfig(
    lr=0.004,
    lr_incremental=0.001,
    min_steps_full=300,
    min_steps_incremental=50,
    epochs_full=10,
    epochs_incremental=2,
    max_minutes=5,
)


@pytest.mark.parametrize(
    ("kind", "batches_per_epoch", "steps", "lr"),
    [
        (RunKind.FULL, 2, 300, 0.004),  # a small project still gets its minimum steps
        (RunKind.FULL, 100, 1000, 0.004),  # a large one sees every correction 10 times
        (RunKind.INCREMENTAL, 2, 50, 0.001),  # incremental runs have a minimum too
        (RunKind.INCREMENTAL, 40, 80, 0.001),
    ],
)
def test_plan_takes_the_larger_of_minimum_steps_and_epochs(
    kind: RunKind, batches_per_epoch: int, steps: int, lr: float
) -> None:
    plan = plan_steps(OPTIM, kind=kind, batches_per_epoch=batches_per_epoch)

    assert (plan.steps, plan.lr, plan.max_s) == (steps, lr, 300.0)


def test_schedule_warms_up_then_decays_to_zero() -> None:
    plan = StepPlan(steps=100, lr=1.0, max_s=60, warmup_share=0.1)
    rates = [learning_rate(step, 100, plan) for step in range(100)]

    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(rates[9:]))
    assert rates[-1] < 0.001


def test_time_cap_shrinks_the_plan_and_never_grows_it() -> None:
    plan = StepPlan(steps=1000, lr=1.0, max_s=60, warmup_share=0.1)

    assert affordable_steps(10, elapsed_s=5.0, step_s=0.5, plan=plan) == 120
    assert affordable_steps(10, elapsed_s=5.0, step_s=0.001, plan=plan) == 1000
    assert affordable_steps(10, elapsed_s=70.0, step_s=0.5, plan=plan) == 10
