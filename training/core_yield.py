"""Training yields the machine's cores to the processes beside it when they need them.

On a machine shared with the service, niceness alone does not keep training out of the
way: the niced training thread still runs on every core the service leaves idle for a
moment, and the service's requests then share caches and memory bandwidth with it (and,
on a virtual machine, often a physical core). So between two training steps the worker
looks at how many cores the *other* processes used since the last look (``/proc/stat``
minus this process's own time). When they used more than the cores training leaves them,
they want the training cores too: the worker pauses, looking again every ``pause_s``,
until they use less or ``max_wait_s`` has passed (then it takes one step anyway, so
training always progresses).

Linux only (``/proc``); elsewhere, and on a GPU, training never pauses.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PROC_STAT = Path("/proc/stat")
OWN_STAT = Path("/proc/self/stat")


@dataclass(frozen=True)
class CpuTimes:
    """Cumulative CPU seconds: every process on the machine, and this process alone."""

    machine_busy_s: float
    own_s: float
    at_s: float
    """``time.monotonic()`` when read."""


def read_cpu_times() -> CpuTimes | None:
    """The machine's busy CPU seconds (user, nice, system, irq, softirq: idle and iowait
    are not busy, steal is the hypervisor's) and this process's (all its threads); None
    without ``/proc``."""
    try:
        cpu = PROC_STAT.read_text().split("\n", 1)[0].split()[1:]
        own = OWN_STAT.read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq = (int(value) for value in cpu[:7])
    utime, stime = int(own[11]), int(own[12])  # fields 14 and 15 of proc(5)
    return CpuTimes(
        machine_busy_s=(user + nice + system + irq + softirq) / ticks,
        own_s=(utime + stime) / ticks,
        at_s=time.monotonic(),
    )


def others_cores(before: CpuTimes, after: CpuTimes) -> float:
    """Cores the other processes kept busy, on average, between two readings."""
    elapsed = after.at_s - before.at_s
    if elapsed <= 0:
        return 0.0
    others = (after.machine_busy_s - before.machine_busy_s) - (after.own_s - before.own_s)
    return max(0.0, others) / elapsed


@dataclass(frozen=True)
class CoreYieldOptions:
    """When training pauses for the processes beside it (``PRELABEL_TRAINING_YIELD_*``).

    Attributes:
        left_cores: Cores training leaves to the others (the usable cores minus the
            training threads, at least one): the others using more makes training pause.
        pause_s: How long one pause lasts before looking again.
        max_wait_s: The longest training waits before one step (then it steps anyway).
    """

    left_cores: float
    pause_s: float = 0.2
    max_wait_s: float = 5.0


@dataclass
class YieldTally:
    """What yielding cost a training run: pauses and the seconds spent in them."""

    pauses: int = 0
    waited_s: float = 0.0


class CoreYield:
    """Call :meth:`before_step` before each training step (``training.train.fit``)."""

    def __init__(
        self,
        options: CoreYieldOptions,
        *,
        read: Callable[[], CpuTimes | None] = read_cpu_times,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.options = options
        self.tally = YieldTally()
        self._read = read
        self._sleep = sleep
        self._last = read()

    def _others_busy(self) -> bool:
        now = self._read()
        if now is None or self._last is None:
            return False
        busy = others_cores(self._last, now) > self.options.left_cores
        self._last = now
        return busy

    def before_step(self) -> float:
        """Pause while the other processes want more cores than training leaves them.

        Returns:
            The seconds paused.
        """
        waited = 0.0
        while waited < self.options.max_wait_s and self._others_busy():
            pause = min(self.options.pause_s, self.options.max_wait_s - waited)
            self._sleep(pause)
            waited += pause
            self.tally.pauses += 1
        self.tally.waited_s += waited
        return waited
