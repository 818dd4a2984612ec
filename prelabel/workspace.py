"""The two stores a prelabel process works with, opened from settings in one place."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from prelabel.blobs import BlobStore, LocalBlobStore
from prelabel.database import make_engine, make_session_factory, migrate
from prelabel.settings import StorageSettings


@dataclass(frozen=True)
class Workspace:
    """The database (as a session factory) and the blob store."""

    engine: Engine
    sessions: sessionmaker[Session]
    blobs: BlobStore


def open_workspace(settings: StorageSettings) -> Workspace:
    """Open (and migrate to the newest schema) the stores that ``settings`` name."""
    engine = make_engine(settings.resolved_database_url)
    migrate(engine)
    return Workspace(
        engine=engine,
        sessions=make_session_factory(engine),
        blobs=LocalBlobStore(settings.resolved_blob_dir),
    )
