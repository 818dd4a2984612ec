"""The stores the suite runs on: SQLite by default, PostgreSQL when asked; moto's S3 server.

``PRELABEL_TEST_DATABASE_URL`` (a ``postgresql+psycopg://`` URL of a role with
CREATEDB; ``.ci/postgres`` starts such a server and prints it) switches every
database-touching test to PostgreSQL: each test gets a database of its own, created
from a template migrated once per session, and dropped afterwards.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import URL, Engine, create_engine, make_url, text
from sqlalchemy.pool import NullPool

from objectstore.s3 import make_s3_client
from prelabel.settings import StorageSettings
from prelabel.workspace import Workspace, open_workspace

TEST_DATABASE_URL_ENV = "PRELABEL_TEST_DATABASE_URL"


def server_url() -> URL | None:
    """The PostgreSQL server the suite was asked to use, or None for SQLite."""
    raw = os.environ.get(TEST_DATABASE_URL_ENV, "").strip()
    if not raw:
        return None
    url = make_url(raw)
    if not url.drivername.startswith("postgresql"):
        raise ValueError(
            f"{TEST_DATABASE_URL_ENV} must be a postgresql:// URL, got {url.drivername!r}"
        )
    return url


@dataclass(frozen=True)
class PostgresServer:
    """Creates and drops the per-test databases on one PostgreSQL server."""

    url: URL
    admin: Engine

    @classmethod
    def connect(cls, url: URL) -> PostgresServer:
        """An AUTOCOMMIT engine on ``url`` (CREATE/DROP DATABASE cannot run in a transaction)."""
        admin = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        return cls(url=url, admin=admin)

    def create(self, prefix: str, template: str | None = None) -> str:
        """A new database named ``<prefix>_<random>``, a copy of ``template`` if given."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        copy = f" TEMPLATE {template}" if template else ""
        with self.admin.connect() as connection:
            connection.execute(text(f"CREATE DATABASE {name}{copy}"))
        return name

    def drop(self, name: str) -> None:
        """Drop the database, closing whatever connections a test left open."""
        with self.admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))

    def url_of(self, name: str) -> str:
        """The URL (password included) of database ``name`` on this server."""
        return self.url.set(database=name).render_as_string(hide_password=False)


def storage_environment(settings: StorageSettings) -> dict[str, str]:
    """The ``PRELABEL_*`` variables that make another process open ``settings``' stores."""
    env = {"PRELABEL_HOME": str(settings.home)}
    if settings.database_url:
        env["PRELABEL_DATABASE_URL"] = settings.database_url
    if settings.blob_dir:
        env["PRELABEL_BLOB_DIR"] = str(settings.blob_dir)
    if settings.blob_url:
        env["PRELABEL_BLOB_URL"] = settings.blob_url
        for name in ("endpoint_url", "region", "access_key_id", "addressing_style"):
            value = getattr(settings, f"s3_{name}")
            if value is not None:
                env[f"PRELABEL_S3_{name.upper()}"] = str(value)
        if settings.s3_secret_access_key is not None:
            env["PRELABEL_S3_SECRET_ACCESS_KEY"] = settings.s3_secret_access_key.get_secret_value()
    return env


STORAGE_VARIABLES = (
    "PRELABEL_HOME",
    "PRELABEL_DATABASE_URL",
    "PRELABEL_BLOB_DIR",
    "PRELABEL_BLOB_URL",
    "PRELABEL_S3_ENDPOINT_URL",
    "PRELABEL_S3_REGION",
    "PRELABEL_S3_ACCESS_KEY_ID",
    "PRELABEL_S3_SECRET_ACCESS_KEY",
    "PRELABEL_S3_ADDRESSING_STYLE",
)
"""Every variable ``storage_environment`` may set (to clear before setting them)."""


def use_storage(env: pytest.MonkeyPatch, settings: StorageSettings) -> None:
    """Make the ``PRELABEL_*`` storage variables of this process name ``settings``' stores."""
    for name in STORAGE_VARIABLES:
        env.delenv(name, raising=False)
    for name, value in storage_environment(settings).items():
        env.setenv(name, value)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for_http(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Poll ``url`` until it answers (any status) or ``process`` exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout_s} s")


@dataclass(frozen=True)
class MotoServer:
    """moto's standalone S3 server in a subprocess (``moto[server]``), as s3fs tests itself."""

    endpoint_url: str

    def settings(self, home: Path, bucket: str, prefix: str = "prelabel") -> StorageSettings:
        """Storage settings whose blobs live in ``bucket`` (created here) on this server."""
        settings = StorageSettings(
            home=home,
            blob_url=f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}",
            s3_endpoint_url=self.endpoint_url,
            s3_region="us-east-1",
            s3_access_key_id="moto-test-key",
            s3_secret_access_key=SecretStr("moto-test-secret"),
            s3_addressing_style="path",
        )
        make_s3_client(settings).create_bucket(Bucket=bucket)
        return settings


@contextmanager
def moto_server() -> Iterator[MotoServer]:
    """Start ``python -m moto.server`` on a free port; stop it afterwards."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        wait_for_http(f"{endpoint}/moto-api/", process, timeout_s=60)
        yield MotoServer(endpoint_url=endpoint)
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextmanager
def opened_workspace(settings: StorageSettings) -> Iterator[Workspace]:
    """``open_workspace`` whose connections are closed afterwards (psycopg warns otherwise)."""
    workspace = open_workspace(settings)
    try:
        yield workspace
    finally:
        workspace.engine.dispose()
