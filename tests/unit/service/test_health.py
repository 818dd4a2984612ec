"""``/health`` (liveness) and ``/health/ready`` (readiness: database and blob store)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from prelabel.database import make_engine
from prelabel.settings import SecuritySettings, ServiceSettings, StorageSettings
from prelabel.workspace import Workspace
from tests.backends import free_port
from tests.conftest import admin_token


@pytest.fixture
def s3_client(
    s3_storage_settings: StorageSettings,
    database_url: str | None,
    service_settings: ServiceSettings,
    security_settings: SecuritySettings,
) -> Iterator[TestClient]:
    """The app on the backend database under test, its blobs in a bucket of moto's server."""
    from service.app import create_app

    settings = s3_storage_settings.model_copy(update={"database_url": database_url})
    with TestClient(create_app(settings, service_settings, security_settings)) as test_client:
        test_client.headers["Authorization"] = f"Bearer {admin_token(settings)}"
        yield test_client


def _workspace(client: TestClient) -> Workspace:
    workspace: Workspace = client.app.state.workspace  # type: ignore[attr-defined]
    return workspace


def test_ready_when_database_and_local_blobs_answer(client: TestClient) -> None:
    response = client.get("/health/ready")

    assert response.status_code == 200
    assert response.json() == {"status": "ready", "database": "ok", "blob_store": "ok"}


def test_ready_on_s3_and_unavailable_when_the_bucket_goes(s3_client: TestClient) -> None:
    assert s3_client.get("/health/ready").json()["status"] == "ready"
    blobs = _workspace(s3_client).blobs
    bucket = blobs.bucket  # type: ignore[attr-defined]
    blobs.client.delete_bucket(Bucket=bucket)  # type: ignore[attr-defined]

    response = s3_client.get("/health/ready")

    assert response.status_code == 503
    body = response.json()
    assert (body["status"], body["database"]) == ("unavailable", "ok")
    assert body["blob_store"].startswith("unavailable: ") and bucket in body["blob_store"]
    assert s3_client.get("/health").status_code == 200  # liveness does not look at blobs


def test_unavailable_when_the_database_is_unreachable(client: TestClient) -> None:
    workspace = _workspace(client)
    unreachable = make_engine(f"postgresql+psycopg://prelabel@127.0.0.1:{free_port()}/prelabel")
    client.app.state.workspace = dataclasses.replace(  # type: ignore[attr-defined]
        workspace, engine=unreachable
    )
    try:
        response = client.get("/health/ready")
    finally:
        client.app.state.workspace = workspace  # type: ignore[attr-defined]
        unreachable.dispose()

    assert response.status_code == 503
    assert response.json()["database"] == "unavailable: OperationalError"
    assert response.json()["blob_store"] == "ok"
