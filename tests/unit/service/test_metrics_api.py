"""``GET /projects/{project}/metrics``: filters from the query, CSV, bad filters as 4xx."""

from __future__ import annotations

import csv
import io

from fastapi.testclient import TestClient

from prelabel.workspace import Workspace
from tests.dashboard_fixture import build_fixture_project


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
