"""Shared fixtures: tmp-path storage, the app under TestClient, synthetic labelled images."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from prelabel.accounts import ADMIN_TOKEN_FILE
from prelabel.settings import AuthMode, SecuritySettings, ServiceSettings, StorageSettings
from prelabel.workspace import Workspace, open_workspace
from tests.synthetic import SHAPES_CLASSES


@cache
def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test marked ``gpu`` fails without a CUDA device; it never skips silently.

    Where there is none, deselect them: ``pytest -m "not gpu"`` (``make test`` does).
    """
    if item.get_closest_marker("gpu") is not None and not _cuda_available():
        pytest.fail(
            "this test needs a CUDA device (marker gpu); deselect the gpu tests with "
            "-m 'not gpu' on a machine without one",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One database migrated to head per session; each test starts from a copy (fast)."""
    settings = StorageSettings(home=tmp_path_factory.mktemp("template"))
    open_workspace(settings).engine.dispose()
    return settings.home / "prelabel.db"


@pytest.fixture
def storage_settings(tmp_path: Path, migrated_db: Path) -> StorageSettings:
    settings = StorageSettings(home=tmp_path / "home")
    settings.home.mkdir()
    shutil.copyfile(migrated_db, settings.home / "prelabel.db")
    return settings


@pytest.fixture
def service_settings() -> ServiceSettings:
    return ServiceSettings(max_image_pixels=512 * 512)


@pytest.fixture
def workspace(storage_settings: StorageSettings) -> Iterator[Workspace]:
    opened = open_workspace(storage_settings)
    yield opened
    opened.engine.dispose()


@pytest.fixture
def security_settings() -> SecuritySettings:
    """Auth on, as by default; the secret key is generated into the test's home."""
    return SecuritySettings(auth=AuthMode.ON)


def admin_token(storage: StorageSettings) -> str:
    """The token the first start wrote for the ``admin`` user."""
    return (storage.home / ADMIN_TOKEN_FILE).read_text().strip()


@pytest.fixture
def client(
    storage_settings: StorageSettings,
    service_settings: ServiceSettings,
    security_settings: SecuritySettings,
) -> Iterator[TestClient]:
    """The app under TestClient, authenticated as the bootstrap ``admin``."""
    from service.app import create_app

    app = create_app(storage_settings, service_settings, security_settings)
    with TestClient(app) as test_client:
        test_client.headers["Authorization"] = f"Bearer {admin_token(storage_settings)}"
        yield test_client


@pytest.fixture
def make_project(client: TestClient) -> Callable[[str], str]:
    def create(name: str = "shapes") -> str:
        response = client.post("/projects", json={"name": name, "classes": SHAPES_CLASSES})
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    return create
