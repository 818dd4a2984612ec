"""Computed reads take turns: queue pages, metrics reports and dashboards compute at most
a few at a time per process, so that a burst of them (a hundred annotators opening their
queue at once) does not hold up the draft fetches and corrections of people already at work.

Waiting happens on the event loop, not on a worker thread: requests without a turn keep
every thread free for the rest. Draft fetches, corrections and uploads never wait here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, Request


class ComputedReadTurns:
    """At most ``limit`` computed reads at once in this process (0: no limit).

    Attributes:
        waiting: Reads waiting for a turn right now.
    """

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        self.waiting = 0
        self._semaphore = asyncio.Semaphore(limit) if limit else None

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Hold one turn for the duration of the block, waiting for it if all are taken."""
        if self._semaphore is None:
            yield
            return
        self.waiting += 1
        try:
            await self._semaphore.acquire()
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self._semaphore.release()


async def _computed_read_turn(request: Request) -> AsyncIterator[None]:
    turns: ComputedReadTurns = request.app.state.computed_read_turns
    async with turns.turn():
        yield


COMPUTED_READ_TURN = Depends(_computed_read_turn, scope="function")
"""In ``dependencies=`` of the routes that compute a page from the whole project (queue,
metrics, dashboard): the turn is held while the route's function runs."""
