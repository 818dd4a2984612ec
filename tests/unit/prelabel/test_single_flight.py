"""SingleFlight: concurrent calls for one key share one computation, its result or its error."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from prelabel.single_flight import SingleFlight


def test_concurrent_callers_wait_for_the_running_computation_then_a_later_call_computes_again() -> (
    None
):
    flight: SingleFlight[str, int] = SingleFlight()
    started, release = threading.Event(), threading.Event()
    calls: list[str] = []
    waited: list[str] = []

    def compute() -> int:
        calls.append("x")
        started.set()
        assert release.wait(10)
        return len(calls)

    with ThreadPoolExecutor(3) as pool:
        owner = pool.submit(flight.run, "k", compute)
        assert started.wait(10)
        waiter = pool.submit(flight.run, "k", compute, on_wait=lambda: waited.append("k"))
        other_key = pool.submit(flight.run, "j", lambda: 7)
        assert other_key.result(10) == 7  # another key is not held up
        while not waited:
            threading.Event().wait(0.01)
        release.set()
        assert owner.result(10) == waiter.result(10) == 1
    assert calls == ["x"]
    assert flight.run("k", compute) == 2  # nothing kept once the computation ended


def test_waiters_get_the_owners_error_and_the_key_is_free_again() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    started, release = threading.Event(), threading.Event()

    def failing() -> int:
        started.set()
        assert release.wait(10)
        raise RuntimeError("model file missing")

    with ThreadPoolExecutor(2) as pool:
        owner = pool.submit(flight.run, "k", failing)
        assert started.wait(10)
        waited = threading.Event()
        waiter = pool.submit(flight.run, "k", failing, on_wait=waited.set)
        assert waited.wait(10)
        release.set()
        for future in (owner, waiter):
            with pytest.raises(RuntimeError, match="model file missing"):
                future.result(10)
    assert flight.run("k", lambda: 3) == 3
