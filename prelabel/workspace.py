"""The two stores a prelabel process works with, opened from settings in one place."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import entry_points

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from prelabel.blobs import BlobStore, LocalBlobStore
from prelabel.database import PoolLimits, make_engine, make_session_factory, migrate
from prelabel.deferred_writes import DeferredWrites
from prelabel.errors import IntegrationError
from prelabel.settings import StorageSettings, get_storage_settings


@dataclass(frozen=True)
class Workspace:
    """The database (as a session factory), the writes to it this process defers (read
    audits, token uses: its owner flushes them) and the blob store."""

    engine: Engine
    sessions: sessionmaker[Session]
    blobs: BlobStore
    deferred: DeferredWrites = field(default_factory=DeferredWrites)


logger = logging.getLogger(__name__)

BLOB_STORE_ENTRY_POINTS = "prelabel.blob_stores"
"""Entry-point group of blob-store makers, named by URL scheme (``s3``), each called with
the ``StorageSettings``; packages at the edge (``objectstore``) contribute them, so that
the core never imports a network client."""


def open_blob_store(settings: StorageSettings) -> BlobStore:
    """The blob store ``settings`` name: ``blob_url``'s store, else the local folder.

    Raises:
        ValueError: no installed package provides the URL's scheme.
    """
    if settings.blob_url is None:
        return LocalBlobStore(settings.resolved_blob_dir)
    scheme = settings.blob_url.split("://", 1)[0]
    makers = {entry.name: entry for entry in entry_points(group=BLOB_STORE_ENTRY_POINTS)}
    if scheme not in makers:
        raise ValueError(
            f"no blob store for {scheme}:// URLs is installed (have {sorted(makers)}); "
            f"install the 's3' extra: pip install 'prelabel[s3]'"
        )
    store: BlobStore = makers[scheme].load()(settings)
    return store


def open_workspace(settings: StorageSettings) -> Workspace:
    """Open (and migrate to the newest schema) the stores that ``settings`` name."""
    pool = PoolLimits(
        size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        timeout_s=settings.db_pool_timeout_s,
        recycle_s=settings.db_pool_recycle_s,
    )
    engine = make_engine(settings.resolved_database_url, pool)
    migrate(engine)
    return Workspace(
        engine=engine,
        sessions=make_session_factory(engine),
        blobs=open_blob_store(settings),
    )


def check_stores(workspace: Workspace) -> dict[str, str]:
    """Whether this process can use its stores now (readiness).

    Returns:
        ``{"database": ..., "blob_store": ...}``, each ``"ok"`` or what went wrong.
    """
    checks = {"database": "ok", "blob_store": "ok"}
    try:
        with workspace.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        checks["database"] = f"unavailable: {type(exc).__name__}"
        logger.warning("readiness: database unavailable: %s", exc)
    try:
        workspace.blobs.check()
    except IntegrationError as exc:
        checks["blob_store"] = f"unavailable: {exc}"
        logger.warning("readiness: blob store unavailable: %s", exc)
    return checks


@contextmanager
def workspace_from_settings() -> Iterator[Workspace]:
    """The workspace that the ``PRELABEL_*`` settings name, its connections closed after."""
    workspace = open_workspace(get_storage_settings())
    try:
        yield workspace
    finally:
        workspace.deferred.flush(workspace.sessions)
        workspace.engine.dispose()
