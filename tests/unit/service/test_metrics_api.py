"""``GET /projects/{project}/metrics``: filters from the query, CSV, bad filters as 4xx."""

from __future__ import annotations

import csv
import io

import numpy as np
from fastapi.testclient import TestClient

from prelabel.settings import SecuritySettings, ServiceSettings, StorageSettings
from prelabel.workspace import Workspace
from service.app import create_app
from tests.conftest import admin_token
from tests.dashboard_fixture import SIZE, build_fixture_project
from tests.synthetic import png_bytes


def test_metrics_filters_period_and_csv(client: TestClient, workspace: Workspace) -> None:
    fixture = build_fixture_project(workspace)
    url = "/projects/fixture/metrics"
    body = client.get(url, params={"annotator": "bo", "period": "week"}).json()
    assert body["overall"]["corrections"] == 2
    assert body["filters"]["annotator"] == "bo"
    assert [p["start"] for p in body["time_series"]["points"]] == ["2025-03-03", "2025-03-10"]
    assert body["effort_saved"]["saved_pixels"] == 1 + 0
    assert body["queue"]["queue_length"] == 2
    narrowed = client.get(url, params={"class": 2, "since": "2025-03-04"}).json()
    assert narrowed["overall"]["corrections"] == 1

    answer = client.get(url, params={"format": "csv", "model_version": "v2"})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert [r["correction_id"] for r in rows] == fixture.corrections[2:]


def test_bad_metrics_filters_are_4xx(client: TestClient, workspace: Workspace) -> None:
    build_fixture_project(workspace)
    url = "/projects/fixture/metrics"
    reversed_range = client.get(url, params={"since": "2025-03-06", "until": "2025-03-05"})
    assert reversed_range.status_code == 422
    assert "after until" in reversed_range.json()["detail"]
    unknown_class = client.get(url, params={"class": 9})
    assert unknown_class.status_code == 422 and "class id 9" in unknown_class.json()["detail"]
    for params in ({"since": "yesterday"}, {"period": "month"}, {"format": "xlsx"}):
        assert client.get(url, params=params).status_code == 422, params


def test_the_first_and_last_days_of_the_calendar_are_bounds_like_any_other(
    client: TestClient, workspace: Workspace
) -> None:
    # until=9999-12-31 was a 500: the day after it does not exist.
    build_fixture_project(workspace)
    url = "/projects/fixture/metrics"
    everything = client.get(url).json()["overall"]["corrections"]
    for params in (
        {"until": "9999-12-31"},
        {"since": "0001-01-01", "until": "9999-12-31", "period": "week"},
        {"until": "9999-12-31", "format": "csv"},
    ):
        answer = client.get(url, params=params)
        assert answer.status_code == 200, (params, answer.text)
        if "format" not in params:
            assert answer.json()["overall"]["corrections"] == everything > 0
    assert client.get(url, params={"since": "9999-12-31"}).json()["overall"]["corrections"] == 0


def test_project_wide_sections_are_kept_while_filtered_ones_stay_exact(
    storage_settings: StorageSettings, security_settings: SecuritySettings, workspace: Workspace
) -> None:
    """With ``metrics_sections_max_age_s`` > 0 (5 s by default), the queue, training runs,
    version changes and review come from the process's snapshot until it is that old; the
    corrections' numbers are exact at every request; erasing data, changing the review
    settings or the serving version drops the snapshot."""
    fixture = build_fixture_project(workspace)
    settings = ServiceSettings(max_image_pixels=512 * 512, metrics_sections_max_age_s=60)
    with TestClient(create_app(storage_settings, settings, security_settings)) as client:
        client.headers["Authorization"] = f"Bearer {admin_token(storage_settings)}"
        url = "/projects/fixture/metrics"
        first = client.get(url).json()
        assert (first["overall"]["corrections"], first["queue"]["queue_length"]) == (4, 2)
        assert first["review"]["inter_annotator"]["pairs"] == 0

        img4, img5 = fixture.images[4].id, fixture.images[5].id
        stored = client.put(
            f"/projects/fixture/images/{img4}/correction",
            files={"mask": ("mask.png", png_bytes(np.zeros((SIZE, SIZE), np.uint8)), "image/png")},
            data={"draft_id": fixture.drafts[4]},
        )
        assert stored.status_code in (200, 201), stored.text
        kept = client.get(url).json()
        assert kept["overall"]["corrections"] == 5  # computed now
        assert kept["by_annotator"]["admin"]["corrections"] == 1
        assert kept["queue"]["queue_length"] == 2  # the snapshot, younger than 60 s
        assert kept["project_sections_at"] == first["project_sections_at"] is not None

        assert client.delete(f"/projects/fixture/images/{img5}").status_code == 200
        fresh = client.get(url).json()
        assert (fresh["queue"]["images"], fresh["queue"]["queue_length"]) == (5, 0)
        assert fresh["project_sections_at"] > first["project_sections_at"]

        # Review turned on: the review section follows at once too.
        assert fresh["review"]["review_required"] is False
        assert client.patch("/projects/fixture", json={"review_required": True}).status_code == 200
        assert client.get(url).json()["review"]["review_required"] is True
        # A rollback: the serving version follows at once.
        assert fresh["queue"]["serving_version"] == "v2"
        rollback = client.post("/projects/fixture/models/v1/promote", json={"reason": "test"})
        assert rollback.status_code == 200, rollback.text
        assert client.get(url).json()["queue"]["serving_version"] == "v1"
