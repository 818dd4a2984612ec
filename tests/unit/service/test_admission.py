"""Computed reads take turns; draft fetches never wait behind them (service/admission.py)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient

from prelabel.settings import ServiceSettings
from service.admission import ComputedReadTurns
from service.routes import queue as queue_routes
from tests.polling import wait_for
from tests.synthetic import png_bytes, shapes_sample


@pytest.fixture
def service_settings() -> ServiceSettings:
    return ServiceSettings(
        max_image_pixels=512 * 512, metrics_sections_max_age_s=0, computed_reads_at_once=1
    )


def test_a_draft_is_served_while_computed_reads_wait_their_turn(
    client: TestClient, make_project: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    project = make_project("turns")
    files = [("files", ("a.png", png_bytes(shapes_sample(1)[0]), "image/png"))]
    (image,) = [
        i["id"] for i in client.post(f"/projects/{project}/images", files=files).json()["images"]
    ]
    inside, release = threading.Event(), threading.Event()
    next_images = queue_routes.next_images

    def held(*args: Any, **kwargs: Any) -> Any:
        inside.set()
        assert release.wait(30)
        return next_images(*args, **kwargs)

    monkeypatch.setattr(queue_routes, "next_images", held)
    turns: ComputedReadTurns = client.app.state.computed_read_turns  # type: ignore[attr-defined]
    with ThreadPoolExecutor(2) as pool:
        queue = pool.submit(client.get, f"/projects/{project}/queue")
        assert inside.wait(10)  # the queue page holds the one turn
        metrics = pool.submit(client.get, f"/projects/{project}/metrics")
        wait_for(lambda: turns.waiting == 1, 10, "the metrics request waiting", interval_s=0.01)

        draft = client.get(f"/projects/{project}/images/{image}/draft")

        assert draft.status_code == 200
        assert not metrics.done() and turns.waiting == 1
        release.set()
        assert queue.result().status_code == 200
        assert metrics.result().status_code == 200
    assert turns.waiting == 0


def test_turns_admit_up_to_the_limit_and_none_limits_nothing() -> None:
    async def most_at_once(turns: ComputedReadTurns, readers: int) -> int:
        inside, most = 0, 0

        async def read() -> None:
            nonlocal inside, most
            async with turns.turn():
                inside += 1
                most = max(most, inside)
                await asyncio.sleep(0.01)
                inside -= 1

        await asyncio.gather(*(read() for _ in range(readers)))
        return most

    assert asyncio.run(most_at_once(ComputedReadTurns(2), 6)) == 2
    assert asyncio.run(most_at_once(ComputedReadTurns(0), 6)) == 6
    with pytest.raises(ValueError, match="limit"):
        ComputedReadTurns(-1)
