"""Engine, sessions and schema migrations for the one database prelabel uses.

SQLite under ``PRELABEL_HOME`` by default; any SQLAlchemy URL (PostgreSQL) by
setting ``PRELABEL_DATABASE_URL``. The schema is created and upgraded by Alembic
only, never by ``create_all``, so every deployment follows the same migrations.
Every engine refuses text holding NUL (:func:`refuse_nul_text`) on both backends.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker

from prelabel.errors import ValidationFailed
from prelabel.write_gate import WriteGate, install_write_gate

logger = logging.getLogger(__name__)

_MIGRATIONS = Path(__file__).parent / "migrations"

T = TypeVar("T")

SQLITE_POOL_SIZE = 10
"""SQLite connections kept open per process (more are opened, and closed, under load)."""
SQLITE_BUSY_TIMEOUT_S = 30.0
"""How long an SQLite connection waits for another writer's lock before ``database is locked``."""


def _sqlite_configurer(busy_timeout_s: float) -> Callable[[Any, Any], None]:
    def configure(dbapi_connection: Any, _record: Any) -> None:
        # WAL lets the service read while the worker writes; the busy timeout makes
        # concurrent writers wait for the lock instead of failing at once.
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        cursor.close()

    return configure


def _text_with_nul(parameters: object) -> str | None:
    """The first string holding NUL in statement parameters (a row, a list of rows, ...)."""
    if isinstance(parameters, str):
        return parameters if "\x00" in parameters else None
    if isinstance(parameters, Mapping):
        parameters = parameters.values()
    elif not isinstance(parameters, list | tuple):
        return None
    for item in parameters:
        # Scalars inline, rows by their concrete types (an ABC check per value is slow):
        # a bulk insert passes a million values through here.
        if isinstance(item, str):
            if "\x00" in item:
                return item
        elif isinstance(item, dict | list | tuple):
            found = _text_with_nul(item)
            if found is not None:
                return found
    return None


def refuse_nul_text(
    _connection: Any,
    _cursor: Any,
    _statement: str,
    parameters: object,
    _context: Any,
    _executemany: bool,
) -> None:
    """Refuse a statement whose text parameters hold NUL (U+0000): ``before_cursor_execute``.

    PostgreSQL text cannot hold NUL (psycopg refuses such a parameter, a
    ``sqlalchemy.exc.DataError``), while SQLite would store it or look it up. Refusing
    it on both, for every statement of every path, keeps the backends alike and makes it
    a request's fault, not a server error; the statement is not sent, and the caller's
    transaction rolls back. JSON values are not text parameters: their NUL is escaped.

    Raises:
        ValidationFailed: Showing the value around its first NUL.
    """
    found = _text_with_nul(parameters)
    if found is None:
        return
    start = max(found.index("\x00") - 40, 0)
    raise ValidationFailed(
        f"text holds a NUL character (U+0000), which cannot be stored or looked up: "
        f"{found[start : start + 80]!r}"
    )


@dataclass(frozen=True)
class PoolLimits:
    """The connection pool of a server database (PostgreSQL); SQLite ignores it."""

    size: int = 5
    max_overflow: int = 10
    timeout_s: float = 30.0
    recycle_s: float = 1800.0


def make_engine(
    url: str, pool: PoolLimits | None = None, *, busy_timeout_s: float = SQLITE_BUSY_TIMEOUT_S
) -> Engine:
    """Create an engine for ``url``.

    SQLite files get their folder, WAL and a busy timeout of ``busy_timeout_s``. A
    server database gets a bounded pool (``pool``) whose connections are checked
    before use, so a replica survives a database restart. Both refuse text holding NUL
    (:func:`refuse_nul_text`).
    """
    engine = _make_backend_engine(url, pool, busy_timeout_s)
    event.listen(engine, "before_cursor_execute", refuse_nul_text)
    return engine


def _make_backend_engine(url: str, pool: PoolLimits | None, busy_timeout_s: float) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        on_disk = "///" in url and path not in ("", ":memory:")
        if on_disk:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # No cap on SQLite connections (file handles): the server's thread pool bounds them,
        # and a capped pool made requests wait 30 s and fail under 100 annotators.
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": busy_timeout_s},
            pool_size=SQLITE_POOL_SIZE,
            max_overflow=-1,
        )
        event.listen(engine, "connect", _sqlite_configurer(busy_timeout_s))
        lock_path = Path(f"{path}-write-gate") if on_disk else None
        install_write_gate(engine, WriteGate(lock_path, busy_timeout_s))
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


_RUNS_AFTER_COMMIT = "prelabel.runs_after_commit"
"""``Session.info`` key: the session was made by :func:`make_session_factory`."""
_AFTER_COMMIT = "prelabel.after_commit"
"""``Session.info`` key: the actions :func:`after_commit` queued in the session's transaction."""
_COMMITTED = "prelabel.committed"
"""``Session.info`` key: the queued actions of a transaction that has committed."""


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory whose objects stay readable after commit, and whose sessions
    run :func:`after_commit` actions."""
    factory = sessionmaker(engine, expire_on_commit=False, info={_RUNS_AFTER_COMMIT: True})

    def committed(session: Session) -> None:
        session.info[_COMMITTED] = session.info.pop(_AFTER_COMMIT, [])

    def rolled_back(session: Session) -> None:
        session.info.pop(_AFTER_COMMIT, None)

    def ended(session: Session, ended_transaction: SessionTransaction) -> None:
        # Here the committed transaction has given its connection back (SQLite's write
        # lock and the write gate are free), so each action opens a transaction of its own.
        if ended_transaction.parent is None:
            for action in session.info.pop(_COMMITTED, []):
                _run_after_commit(factory, action)

    event.listen(factory, "after_commit", committed)
    event.listen(factory, "after_rollback", rolled_back)
    event.listen(factory, "after_transaction_end", ended)
    return factory


def after_commit(session: Session, action: Callable[[Session], object]) -> None:
    """Do ``action(session)`` in a transaction of its own (retried while SQLite is busy)
    once the transaction of ``session`` has committed; never if it rolls back.

    For work that must follow a write but need not hold the write's lock (on SQLite, the
    database's one write lock) while it runs, such as evaluating a policy. The action runs
    before ``commit()`` returns. What committed stays committed: an action that fails is
    logged, not raised, so it must be one that something else redoes later.

    Raises:
        RuntimeError: ``session`` was not made by :func:`make_session_factory`.
    """
    if not session.info.get(_RUNS_AFTER_COMMIT):
        raise RuntimeError("after_commit needs a session made by make_session_factory")
    session.info.setdefault(_AFTER_COMMIT, []).append(action)


def _run_after_commit(factory: sessionmaker[Session], action: Callable[[Session], object]) -> None:
    try:
        write_transaction(factory, action)
    except Exception:
        logger.exception(
            "an action after commit failed (%s)", getattr(action, "__qualname__", action)
        )


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits on success and rolls back on any error."""
    with factory() as session, session.begin():
        yield session


@dataclass(frozen=True)
class BusyRetry:
    """How often and how patiently a write is retried after ``database is locked``."""

    attempts: int = 6
    first_delay_s: float = 0.05
    max_delay_s: float = 2.0


def is_busy(exc: OperationalError) -> bool:
    """Whether ``exc`` is SQLite's ``database is locked`` / ``database table is locked`` /
    ``database is busy`` (another writer held the lock past the busy timeout, or a read
    snapshot could not become a write). PostgreSQL never raises these messages."""
    message = str(exc.orig).casefold()
    return "database is locked" in message or "is busy" in message or "table is locked" in message


def retry_on_busy(attempt: Callable[[], T], retry: BusyRetry = BusyRetry()) -> T:
    """Call ``attempt()``, again (whole) while it fails because SQLite was busy.

    ``attempt`` must open its own transaction (and whatever must be undone with it,
    e.g. :func:`prelabel.blobs.undo_puts_on_error`), so that a failed try leaves
    nothing behind. Tries back off exponentially with jitter; the last failure is
    raised. Other errors, and every error of a server database, propagate at once.
    """
    delay_s = retry.first_delay_s
    tries = 1
    while True:
        try:
            return attempt()
        except OperationalError as exc:
            if not is_busy(exc) or tries >= retry.attempts:
                raise
            logger.warning("database busy (try %d/%d): %s", tries, retry.attempts, exc.orig)
        time.sleep(delay_s * random.uniform(0.5, 1.5))  # jitter, not secrecy
        delay_s = min(delay_s * 2, retry.max_delay_s)
        tries += 1


def write_transaction(
    factory: sessionmaker[Session], work: Callable[[Session], T], retry: BusyRetry = BusyRetry()
) -> T:
    """``work(session)`` in one transaction that commits on success, retried on busy SQLite."""

    def attempt() -> T:
        with transaction(factory) as session:
            return work(session)

    return retry_on_busy(attempt, retry)
