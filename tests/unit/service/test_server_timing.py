"""Every answer says how long the service spent on it (``Server-Timing: app;dur=…``)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from bench.load import RoundTrip, round_trip, service_milliseconds
from service.routes import queue as queue_routes


def test_answers_of_every_kind_carry_the_time_spent_in_the_service(
    client: TestClient, make_project: Callable[[str], str]
) -> None:
    project = make_project("timing")
    answers = [
        client.get(f"/projects/{project}/queue"),  # 200
        client.get(f"/projects/{project}/images/no-such-image/draft"),  # 404
        client.get(f"/projects/{project}/queue", params={"limit": "many"}),  # 422
        client.get("/projects", headers={"Authorization": "Bearer wrong"}),  # 401
    ]

    assert [a.status_code for a in answers] == [200, 404, 422, 401]
    for answer in answers:
        milliseconds = service_milliseconds(answer.headers.get("server-timing"))
        assert milliseconds >= 0.0, answer.headers


def test_the_time_covers_the_route_s_work(
    client: TestClient, make_project: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    project = make_project("slow")
    next_images = queue_routes.next_images

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.3)
        return next_images(*args, **kwargs)

    monkeypatch.setattr(queue_routes, "next_images", slow)

    answer = client.get(f"/projects/{project}/queue")

    assert answer.status_code == 200
    assert service_milliseconds(answer.headers["server-timing"]) >= 300.0


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("app;dur=12.5", 12.5),
        ('db;dur=3, app;desc="service";dur=7', 7.0),
        ("app", math.nan),
        ("app;dur=fast", math.nan),
        ("cache;dur=2", math.nan),
        ("", math.nan),
        (None, math.nan),
    ],
)
def test_the_load_benchmark_reads_the_app_duration(header: str | None, expected: float) -> None:
    got = service_milliseconds(header)

    assert got == expected or (math.isnan(got) and math.isnan(expected))


def test_the_load_benchmark_splits_a_round_trip_at_the_trace_events() -> None:
    began, started = 100.0, 101.0
    marks = {
        "connection.connect_tcp.started": 101.010,
        "connection.connect_tcp.complete": 101.030,
        "http11.send_request_headers.started": 101.040,
        "http11.send_request_body.complete": 101.050,
        "http11.receive_response_headers.complete": 101.250,
    }

    trip = round_trip(marks, started, 101.300, began, in_service=120.0)

    assert trip == RoundTrip(
        started_s=1.0,
        total=300.0,
        in_service=120.0,
        before_send=40.0,
        connect=20.0,
        waiting=200.0,
        after=50.0,
    )
    reused = round_trip({}, started, 101.1, began, in_service=5.0)
    assert (reused.connect, reused.before_send, reused.waiting, reused.after) == (0, 0, 0, 100)
