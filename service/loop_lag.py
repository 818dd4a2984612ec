"""How late the service's event loop runs: the wait a request has before the application
sees it (reading, parsing, dispatching all happen on the loop).

``Server-Timing`` measures from the moment a request reaches the application; a request
that waits for a busy event loop (its threads holding the GIL, a burst of arrivals) waits
before that. This sampler sleeps ``interval_s`` at a time on the loop and records how much
later than asked it woke, in ``prelabel_event_loop_lag_seconds``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress


async def sample_loop_lag(interval_s: float, observe: Callable[[float], None]) -> None:
    """Sleep ``interval_s`` at a time, forever, passing how late each wake-up was (seconds)."""
    while True:
        asleep = time.perf_counter()
        await asyncio.sleep(interval_s)
        observe(max(0.0, time.perf_counter() - asleep - interval_s))


@asynccontextmanager
async def loop_lag_sampled(
    interval_s: float, observe: Callable[[float], None]
) -> AsyncIterator[None]:
    """Sample the running loop's lag for the duration of the block (0: not at all)."""
    if interval_s <= 0:
        yield
        return
    task = asyncio.create_task(sample_loop_lag(interval_s, observe), name="loop-lag")
    try:
        yield
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
