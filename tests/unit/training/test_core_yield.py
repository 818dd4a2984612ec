"""Training pauses between steps while the processes beside it need the cores it uses
(``training.core_yield``), never longer than its bound, and says how long it paused."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from models.builder import build_network
from prelabel.jobs import RunKind
from prelabel.settings import WorkerSettings
from tests.e2e.test_loop import TINY_TRAINING
from tests.synthetic import shapes_sample
from training.config import TrainingConfig
from training.core_yield import (
    CoreYield,
    CoreYieldOptions,
    CpuTimes,
    others_cores,
    read_cpu_times,
)
from training.data import Sample
from training.train import fit, plan_steps, training_dataset
from training.worker import core_yield_options, launch_from_settings, usable_cores


def test_others_cores_is_the_machine_busy_time_less_this_process_over_the_interval() -> None:
    before = CpuTimes(machine_busy_s=100.0, own_s=10.0, at_s=50.0)
    after = CpuTimes(machine_busy_s=103.0, own_s=11.0, at_s=52.0)
    assert others_cores(before, after) == pytest.approx(1.0)  # (3 - 1) s over 2 s
    assert others_cores(after, after) == 0.0
    # Counters read a tick apart never give a negative share.
    assert others_cores(before, CpuTimes(100.0, 10.5, 51.0)) == 0.0


class _Machine:
    """Readings where the other processes use ``busy[i]`` cores in the i-th interval."""

    def __init__(self, busy: list[float]) -> None:
        self.busy = iter(busy)
        self.now = CpuTimes(machine_busy_s=0.0, own_s=0.0, at_s=0.0)
        self.slept: list[float] = []

    def read(self) -> CpuTimes:
        cores = next(self.busy, 0.0)
        self.now = CpuTimes(self.now.machine_busy_s + cores, self.now.own_s, self.now.at_s + 1.0)
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


def _yield(machine: _Machine, max_wait_s: float = 5.0) -> CoreYield:
    return CoreYield(
        CoreYieldOptions(left_cores=1.0, pause_s=0.2, max_wait_s=max_wait_s),
        read=machine.read,
        sleep=machine.sleep,
    )


def test_training_pauses_while_the_others_want_more_cores_than_it_leaves_them() -> None:
    # The first reading is the start; then: a step while the others used 1.8 cores, two
    # pauses while they still used 1.5 and 1.2, and a look at 0.6 cores: step again.
    machine = _Machine([0.0, 1.8, 1.5, 1.2, 0.6])
    pacer = _yield(machine)
    assert pacer.before_step() == pytest.approx(0.6)
    assert machine.slept == [0.2, 0.2, 0.2]
    assert pacer.tally.pauses == 3 and pacer.tally.waited_s == pytest.approx(0.6)


def test_training_does_not_pause_when_the_others_use_no_more_than_they_are_left() -> None:
    machine = _Machine([0.0, 1.0, 0.3])
    pacer = _yield(machine)
    assert pacer.before_step() == 0.0
    assert pacer.before_step() == 0.0
    assert machine.slept == [] and pacer.tally.pauses == 0


def test_a_pause_never_outlasts_its_bound_so_training_always_progresses() -> None:
    machine = _Machine([0.0] + [2.0] * 100)
    pacer = _yield(machine, max_wait_s=0.5)
    assert pacer.before_step() == pytest.approx(0.5)
    assert sum(machine.slept) == pytest.approx(0.5)
    assert machine.slept[-1] == pytest.approx(0.1)  # the last pause is cut to the bound


def test_without_proc_training_never_pauses() -> None:
    slept: list[float] = []
    pacer = CoreYield(CoreYieldOptions(left_cores=0.0), read=lambda: None, sleep=slept.append)
    assert pacer.before_step() == 0.0 and slept == []


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


@pytest.mark.skipif(read_cpu_times() is None, reason="needs /proc (Linux)")
def test_a_busy_process_beside_it_makes_training_pause() -> None:
    """Real /proc readings: a process spinning on a core is seen as the others' load."""
    busy = multiprocessing.get_context("spawn").Process(target=_spin, args=(20.0,))
    busy.start()
    try:
        time.sleep(1.0)  # the spinner has started
        pacer = CoreYield(CoreYieldOptions(left_cores=0.5, pause_s=0.1, max_wait_s=1.0))
        time.sleep(0.5)  # an interval in which the spinner used about one core
        assert pacer.before_step() > 0
        assert pacer.tally.pauses >= 1
    finally:
        busy.kill()
        busy.join()


@pytest.mark.skipif(read_cpu_times() is None, reason="needs /proc (Linux)")
def test_cpu_readings_count_this_process_time() -> None:
    before = read_cpu_times()
    _spin(0.3)
    after = read_cpu_times()
    assert before is not None and after is not None
    assert after.own_s - before.own_s >= 0.2
    assert after.machine_busy_s - before.machine_busy_s >= after.own_s - before.own_s - 0.05


def test_the_worker_leaves_the_others_the_cores_training_does_not_use() -> None:
    settings = WorkerSettings(torch_threads=1)
    options = core_yield_options(settings)
    assert options is not None
    assert options.left_cores == max(1, usable_cores() - 1)
    assert (options.pause_s, options.max_wait_s) == (0.2, 5.0)
    assert launch_from_settings(settings).core_yield == options
    assert core_yield_options(WorkerSettings(training_yield_max_s=0)) is None
    assert launch_from_settings(WorkerSettings(training_yield_max_s=0)).core_yield is None


def _samples(count: int) -> Iterator[Sample]:
    return (Sample(str(i), str(i), *shapes_sample(i)) for i in range(count))


def test_fit_pauses_before_steps_and_reports_the_seconds_paused() -> None:
    config = TrainingConfig.model_validate(
        {
            **TINY_TRAINING,
            "optim": {**TINY_TRAINING["optim"], "min_steps_full": 4, "epochs_full": 1},
        }
    )
    torch.manual_seed(0)
    net = build_network(config.model)
    dataset = training_dataset(list(_samples(4)), config.model, config, ignore_index=255)
    plan = plan_steps(config.optim, kind=RunKind.FULL, batches_per_epoch=2)
    machine = _Machine([0.0, 2.0, 2.0, 0.0])  # two pauses before the first step only
    reports: list[dict[str, Any]] = []
    fitted = fit(
        net,
        dataset,
        plan,
        config,
        ignore_index=255,
        on_progress=reports.append,
        core_yield=_yield(machine),
    )
    assert fitted.steps == plan.steps
    assert fitted.yielded_s == pytest.approx(0.4)
    assert machine.slept == [0.2, 0.2]
    assert reports and reports[-1]["yielded_s"] == pytest.approx(0.4)
