"""One writer at a time on an SQLite file, queued without SQLite's polling.

SQLite has one write lock per file: a transaction takes it at its first write statement
and keeps it until commit or rollback. A writer that finds it taken waits in SQLite's
busy handler, which sleeps between tries (up to 100 ms each), so under load the lock
sits free until some sleeper wakes, and unlucky writers lose race after race for seconds.
The gate takes the same moment (the first write statement of a transaction) and is
released with the transaction: threads of a process queue on a lock and are woken at once;
processes (service replicas, the worker) queue on an advisory lock (``flock``) on a file
beside the database, polled every millisecond by the one waiting thread of each
process. Waiting longer than the busy timeout fails like SQLite's own
(``database is locked``), so :func:`prelabel.database.retry_on_busy` treats both alike.
"""

from __future__ import annotations

import fcntl
import os
import re
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event

_WRITE_STATEMENT = re.compile(r"\s*(INSERT|UPDATE|DELETE|REPLACE)\b", re.IGNORECASE)
_HOLDS_GATE = "prelabel_holds_write_gate"
_POLL_S = 0.001


class WriteGate:
    """The write turn of one process on one database file (``lock_path``: None for an
    in-memory database, which only this process sees)."""

    def __init__(self, lock_path: Path | None, timeout_s: float) -> None:
        self._threads = threading.Lock()
        self._timeout_s = timeout_s
        self._fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600) if lock_path else None

    def acquire(self) -> None:
        """Wait for the turn.

        Raises:
            sqlite3.OperationalError: ``database is locked`` after ``timeout_s``.
        """
        deadline = time.monotonic() + self._timeout_s
        if not self._threads.acquire(timeout=self._timeout_s):
            raise sqlite3.OperationalError("database is locked (write gate: another thread)")
        if self._fd is None:
            return
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    self._threads.release()
                    raise sqlite3.OperationalError(
                        "database is locked (write gate: another process)"
                    ) from None
                time.sleep(_POLL_S)

    def release(self) -> None:
        """Hand the turn on."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._threads.release()


def install_write_gate(engine: Engine, gate: WriteGate) -> None:
    """Make every transaction on ``engine`` take ``gate`` at its first write statement
    and release it when it commits or rolls back (or its connection returns to the pool)."""

    def enter(_cursor: Any, statement: str, *args: Any) -> None:
        info = args[-1].root_connection.info  # the execution context's connection
        if info.get(_HOLDS_GATE) or not _WRITE_STATEMENT.match(statement):
            return
        gate.acquire()
        info[_HOLDS_GATE] = True

    def release(info: dict[Any, Any]) -> None:
        if info.pop(_HOLDS_GATE, False):
            gate.release()

    # At the driver call, after every ``before_cursor_execute`` hook, as SQLite's own lock.
    for driver_call in ("do_execute", "do_executemany", "do_execute_no_params"):
        event.listen(engine, driver_call, enter)
    event.listen(engine, "commit", lambda connection: release(connection.info))
    event.listen(engine, "rollback", lambda connection: release(connection.info))
    # A connection returned to the pool is rolled back by the pool itself, without the
    # rollback event; its record's info is the dict ``Connection.info`` returns.
    event.listen(engine.pool, "checkin", lambda _dbapi, record: release(record.info))
