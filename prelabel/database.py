"""Engine, sessions and schema migrations for the one database prelabel uses.

SQLite under ``PRELABEL_HOME`` by default; any SQLAlchemy URL (PostgreSQL) by
setting ``PRELABEL_DATABASE_URL``. The schema is created and upgraded by Alembic
only, never by ``create_all``, so every deployment follows the same migrations.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

logger = logging.getLogger(__name__)

_MIGRATIONS = Path(__file__).parent / "migrations"


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the service read while the worker writes; the busy timeout makes
    # concurrent writers wait for the lock instead of failing at once.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


@dataclass(frozen=True)
class PoolLimits:
    """The connection pool of a server database (PostgreSQL); SQLite ignores it."""

    size: int = 5
    max_overflow: int = 10
    timeout_s: float = 30.0
    recycle_s: float = 1800.0


def make_engine(url: str, pool: PoolLimits | None = None) -> Engine:
    """Create an engine for ``url``.

    SQLite files get their folder, WAL and a busy timeout. A server database gets a
    bounded pool (``pool``) whose connections are checked before use, so a replica
    survives a database restart.
    """
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _configure_sqlite)
        return engine
    limits = pool or PoolLimits()
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=limits.size,
        max_overflow=limits.max_overflow,
        pool_timeout=limits.timeout_s,
        pool_recycle=int(limits.recycle_s),
    )


def migrate(engine: Engine) -> None:
    """Bring the database schema to the newest Alembic revision."""
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    logger.info("database schema at head (%s)", engine.url.render_as_string(hide_password=True))


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory whose objects stay readable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits on success and rolls back on any error."""
    with factory() as session, session.begin():
        yield session
