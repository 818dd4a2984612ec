"""``GET /metrics``: the exposition parsed with prometheus-client's own parser."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from prelabel.settings import AuthMode, SecuritySettings, ServiceSettings, StorageSettings
from prelabel.workspace import Workspace
from service.app import create_app
from service.telemetry import exposition
from tests.dashboard_fixture import build_fixture_project

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _samples(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_exposition_counts_drafts_errors_and_reads_the_database(
    client: TestClient, workspace: Workspace
) -> None:
    fixture = build_fixture_project(workspace)
    queued = fixture.images[4].id
    before = _samples(client.get("/metrics").text)
    assert client.get(f"/projects/fixture/images/{queued}/draft").status_code == 200
    assert client.get("/projects/fixture/images/nope").status_code == 404
    answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    after = _samples(answer.text)

    served = {"project": "fixture", "model_version": "v2", "format": "png"}
    name = "prelabel_drafts_served_total"
    delta = _value(after, name, **served, source="precomputed") - _value(
        before, name, **served, source="precomputed"
    )
    assert delta == 1
    latency = "prelabel_draft_latency_seconds_count"
    grown = _value(after, latency, project="fixture", source="precomputed") - _value(
        before, latency, project="fixture", source="precomputed"
    )
    assert grown == 1
    errors = "prelabel_http_errors_total"
    assert _value(after, errors, code="404") - _value(before, errors, code="404") == 1

    assert (
        _value(after, "prelabel_corrections_received_total", project="fixture", source="api") == 4
    )
    assert _value(after, "prelabel_acceptance_rate", project="fixture") == 0.5
    assert _value(after, "prelabel_queue_length", project="fixture") == 2
    runs = "prelabel_training_runs_total"
    assert _value(after, runs, project="fixture", status="succeeded") == 3
    assert _value(after, runs, project="fixture", status="failed") == 1
    assert _value(after, runs, project="fixture", status="running") == 1
    duration = "prelabel_training_run_duration_seconds"
    assert _value(after, f"{duration}_count", project="fixture", status="succeeded") == 3
    assert _value(after, f"{duration}_sum", project="fixture", status="succeeded") == 5400
    assert _value(after, "prelabel_worker_heartbeat_age_seconds", worker="w1") > 0


def test_metrics_need_an_admin_token(client: TestClient) -> None:
    user = client.post("/users", json={"name": "scraper"}).json()["token"]
    assert client.get("/metrics", headers={"Authorization": ""}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": f"Bearer {user}"}).status_code == 403


@pytest.fixture
def public_client(
    storage_settings: StorageSettings, service_settings: ServiceSettings
) -> Iterator[TestClient]:
    app = create_app(
        storage_settings, service_settings, SecuritySettings(auth=AuthMode.ON, metrics_public=True)
    )
    with TestClient(app) as client:
        yield client


def test_public_metrics_need_no_token(public_client: TestClient) -> None:
    answer = public_client.get("/metrics")
    assert answer.status_code == 200, answer.text
    assert "prelabel_queue_length" in answer.text
    assert public_client.get("/projects").status_code == 401


_INCREMENT = """
from prelabel.drafts import Draft
from service.telemetry import observe_draft
from datetime import UTC, datetime
draft = Draft(id="d", project_id="p", image_id="i", model_version="v7", mask_key="m",
              confidence_key="c", mean_confidence=0.5, latency_ms=1.0,
              created_at=datetime.now(UTC))
observe_draft("multi", draft, served_as="json", precomputed=False, seconds=0.2)
"""


def test_process_series_add_up_over_processes(tmp_path: Path, workspace: Workspace) -> None:
    folder = tmp_path / "prometheus"
    folder.mkdir()
    env = os.environ | {"PROMETHEUS_MULTIPROC_DIR": str(folder)}
    for _ in range(2):
        subprocess.run([sys.executable, "-c", _INCREMENT], env=env, check=True, timeout=120)
    samples = _samples(exposition(workspace, folder).decode())
    labels = {"project": "multi", "model_version": "v7", "format": "json", "source": "computed"}
    assert _value(samples, "prelabel_drafts_served_total", **labels) == 2
    latency = "prelabel_draft_latency_seconds_sum"
    assert _value(samples, latency, project="multi", source="computed") == pytest.approx(0.4)
