"""Every answer says how long the service spent on it (``Server-Timing: app;dur=…``)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from bench.load import service_milliseconds
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
