"""The service samples its event loop's lag into ``prelabel_event_loop_lag_seconds``."""

from __future__ import annotations

import asyncio
import time

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from bench.load import loop_lag_between
from prelabel.settings import ServiceSettings
from service.loop_lag import loop_lag_sampled
from tests.polling import wait_for

NAME = "prelabel_event_loop_lag_seconds"


@pytest.fixture
def service_settings() -> ServiceSettings:
    return ServiceSettings(max_image_pixels=512 * 512, loop_lag_interval_s=0.02)


def _late_wakeups(client: TestClient, over: str) -> tuple[float, float]:
    """(all sampled wake-ups, those later than ``over`` seconds) in the exposition."""
    answer = client.get("/metrics")
    assert answer.status_code == 200
    count, within = 0.0, 0.0
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            if sample.name == f"{NAME}_count":
                count = sample.value
            if sample.name == f"{NAME}_bucket" and sample.labels.get("le") == over:
                within = sample.value
    return count, count - within


def test_a_blocked_event_loop_shows_as_a_late_wakeup(client: TestClient) -> None:
    sampled_before, late_before = _late_wakeups(client, "0.25")
    wait_for(
        lambda: _late_wakeups(client, "0.25")[0] > sampled_before + 3,
        10,
        "the sampler to wake a few times",
        interval_s=0.05,
    )
    assert client.portal is not None

    client.portal.call(time.sleep, 0.4)  # runs on the event loop's thread: blocks it

    wait_for(
        lambda: _late_wakeups(client, "0.25")[1] >= late_before + 1,
        10,
        "a wake-up over 0.25 s late",
        interval_s=0.05,
    )


def test_no_sampling_at_interval_zero() -> None:
    observed: list[float] = []

    async def run() -> None:
        async with loop_lag_sampled(0, observed.append):
            await asyncio.sleep(0.1)

    asyncio.run(run())

    assert observed == []


def test_sampling_stops_with_the_block() -> None:
    observed: list[float] = []

    async def run() -> int:
        async with loop_lag_sampled(0.01, observed.append):
            await asyncio.sleep(0.1)
        stopped_at = len(observed)
        await asyncio.sleep(0.1)
        return stopped_at

    stopped_at = asyncio.run(run())

    assert stopped_at >= 3 and all(lag >= 0 for lag in observed)
    assert len(observed) == stopped_at


def test_the_load_benchmark_reads_the_lag_between_two_scrapes() -> None:
    inf = float("inf")
    first = {0.1: 10.0, 0.25: 10.0, inf: 10.0}
    last = {0.1: 105.0, 0.25: 108.0, inf: 110.0}  # 100 wake-ups: 95 on time, 3, then 2 late

    lag = loop_lag_between(first, last)

    assert lag == {"wakeups": 100, "over_100ms": 5, "over_250ms": 2, "p99_ms_at_most": None}
    assert loop_lag_between(first, first)["p99_ms_at_most"] is None
    on_time = {0.1: 105.0, 0.25: 110.0, inf: 110.0}
    assert loop_lag_between(first, on_time)["p99_ms_at_most"] == 250.0
