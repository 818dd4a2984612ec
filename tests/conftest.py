"""Shared fixtures: tmp-path storage, the app under TestClient, synthetic labelled images."""

from __future__ import annotations

import gc
import shutil
import uuid
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from prelabel.accounts import ADMIN_TOKEN_FILE
from prelabel.database import make_engine, migrate
from prelabel.settings import AuthMode, SecuritySettings, ServiceSettings, StorageSettings
from prelabel.workspace import Workspace, open_workspace
from tests.backends import MotoServer, PostgresServer, moto_server, server_url
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


@pytest.fixture
def storage_settings(tmp_path: Path, database_url: str | None) -> StorageSettings:
    """Storage under ``tmp_path/home`` on a fresh migrated database of the selected backend."""
    settings = StorageSettings(home=tmp_path / "home", database_url=database_url)
    settings.home.mkdir(exist_ok=True)
    return settings


@pytest.fixture
def service_settings() -> ServiceSettings:
    """Small images; metrics sections computed at every request, so that a test sees its
    own writes at once (``tests/unit/service/test_metrics_api.py`` covers keeping them)."""
    return ServiceSettings(max_image_pixels=512 * 512, metrics_sections_max_age_s=0)


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


# --- scale-out: database backends ---------------------------------------------------------
# SQLite unless PRELABEL_TEST_DATABASE_URL names a PostgreSQL server (tests/backends.py).
# Each test gets its own database already migrated to head: a copy of a SQLite file, or a
# PostgreSQL database made from a migrated template. On PostgreSQL, tests that touch no
# database (their fixtures never reach `database_url`) are deselected: they do not depend on
# the backend and already ran in the SQLite pass.

_DATABASE_FIXTURES = frozenset({"database_url", "empty_database_url"})


def pytest_report_header(config: pytest.Config) -> str:
    url = server_url()
    backend = url.render_as_string(hide_password=True) if url else "SQLite (a file per test)"
    return f"prelabel database backend: {backend}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Tests marked `postgres` need the server: they run in the PostgreSQL pass only.
    on_postgres = server_url() is not None
    kept, deselected = [], []
    for item in items:
        touches = _DATABASE_FIXTURES & set(getattr(item, "fixturenames", ()))
        needs_server = item.get_closest_marker("postgres") is not None
        keep = (touches or needs_server) if on_postgres else not needs_server
        (kept if keep else deselected).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer | None]:
    """The PostgreSQL server under test, or None when the suite runs on SQLite."""
    url = server_url()
    if url is None:
        yield None
        return
    server = PostgresServer.connect(url)
    yield server
    server.admin.dispose()


@pytest.fixture(scope="session")
def migrated_template(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer | None
) -> Iterator[str]:
    """One database migrated to head per session: a SQLite file path or a PostgreSQL name."""
    if postgres_server is None:
        path = tmp_path_factory.mktemp("template") / "prelabel.db"
        engine = make_engine(f"sqlite:///{path}")
        migrate(engine)
        engine.dispose()
        yield str(path)
        return
    name = postgres_server.create("prelabel_template")
    engine = make_engine(postgres_server.url_of(name))
    migrate(engine)
    engine.dispose()
    yield name
    postgres_server.drop(name)


@pytest.fixture
def database_url(
    tmp_path: Path, migrated_template: str, postgres_server: PostgresServer | None
) -> Iterator[str | None]:
    """A fresh database at head for this test: its URL, or None for SQLite in ``tmp_path/home``.

    None keeps SQLite tests on the embedded default (``home/prelabel.db``), as users run it.
    """
    if postgres_server is None:
        (tmp_path / "home").mkdir(exist_ok=True)
        shutil.copyfile(migrated_template, tmp_path / "home" / "prelabel.db")
        yield None
        return
    name = postgres_server.create("prelabel_test", template=migrated_template)
    yield postgres_server.url_of(name)
    postgres_server.drop(name)


@pytest.fixture(autouse=True)
def _collect_connections_per_test(postgres_server: PostgresServer | None) -> Iterator[None]:
    """On PostgreSQL, a connection a test leaves open warns (psycopg) when collected: collect
    after each test so the warning names the test that leaked it, not a later one."""
    yield
    if postgres_server is not None:
        gc.collect()


@pytest.fixture
def empty_database_url(tmp_path: Path, postgres_server: PostgresServer | None) -> Iterator[str]:
    """The URL of an empty database (no tables) of the selected backend, for migration tests."""
    if postgres_server is None:
        yield f"sqlite:///{tmp_path / 'nested' / 'prelabel.db'}"
        return
    name = postgres_server.create("prelabel_empty")
    yield postgres_server.url_of(name)
    postgres_server.drop(name)


# --- scale-out: S3 blob store -------------------------------------------------------------
# moto's standalone S3 server, one subprocess per session; each test gets its own bucket.


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoServer]:
    """moto's S3 server (``python -m moto.server`` on a free port) for this session."""
    with moto_server() as server:
        yield server


@pytest.fixture
def s3_storage_settings(tmp_path: Path, moto_s3: MotoServer) -> StorageSettings:
    """Storage settings whose blobs go to a fresh bucket on the moto server (SQLite home)."""
    return moto_s3.settings(tmp_path / "home", f"prelabel-{uuid.uuid4().hex[:16]}")
