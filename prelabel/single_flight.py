"""One computation per key at a time: concurrent callers for a key share its result."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    """Runs ``compute`` for a key unless a concurrent call for that key is running it
    already; then waits for that call's result (or its error). Keeps nothing afterwards:
    a later call computes again (pair it with a cache for that)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight: dict[K, Future[V]] = {}

    def run(
        self, key: K, compute: Callable[[], V], *, on_wait: Callable[[], None] | None = None
    ) -> V:
        """``compute()``'s result for ``key``, computed once across concurrent callers;
        ``on_wait`` is called by a caller that waits for another's computation."""
        with self._lock:
            pending = self._in_flight.get(key)
            owner = pending is None
            if pending is None:
                pending = self._in_flight[key] = Future()
        if not owner:
            if on_wait is not None:
                on_wait()
            return pending.result()
        try:
            value = compute()
        except BaseException as exc:
            pending.set_exception(exc)
            raise
        else:
            pending.set_result(value)
            return value
        finally:
            with self._lock:
                del self._in_flight[key]
