"""SQLite busy handling: concurrent writers on one file lose nothing thanks to
``write_transaction``'s retries, where plain transactions fail with ``database is locked``.

SQLite only (PostgreSQL has row locks and no ``database is locked``): the tests make
their own database file and do not use the database fixtures.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, func, insert, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from prelabel.database import (
    BusyRetry,
    is_busy,
    make_engine,
    make_session_factory,
    retry_on_busy,
    transaction,
    write_transaction,
)

WRITERS = 4
WRITES_EACH = 10
HOLD_S = 0.05
"""Each write keeps the lock this long: longer than the busy timeout below."""
BUSY_TIMEOUT_S = 0.01

metadata = MetaData()
rows = Table(
    "rows",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("writer", String(20), nullable=False),
)


def _engine(tmp_path: Path) -> Engine:
    engine = make_engine(f"sqlite:///{tmp_path / 'busy.db'}", busy_timeout_s=BUSY_TIMEOUT_S)
    metadata.create_all(engine)
    return engine


def _slow_insert(writer: str) -> Callable[[Session], None]:
    def work(session: Session) -> None:
        session.execute(insert(rows).values(writer=writer))
        time.sleep(HOLD_S)  # the write lock is held until commit

    return work


def _hammer(engine: Engine, write: Callable[[str], None]) -> list[BaseException]:
    errors: list[BaseException] = []
    start = threading.Barrier(WRITERS)

    def writer(name: str) -> None:
        start.wait()
        for _ in range(WRITES_EACH):
            try:
                write(name)
            except OperationalError as exc:
                errors.append(exc)

    threads = [threading.Thread(target=writer, args=(f"w{i}",)) for i in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def _count(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(rows)).scalar_one())


def test_plain_transactions_fail_with_database_is_locked(tmp_path: Path) -> None:
    """The control: without retries this load loses writes (so the next test can fail)."""
    engine = _engine(tmp_path)
    factory = make_session_factory(engine)

    def plain(name: str) -> None:
        with transaction(factory) as session:
            _slow_insert(name)(session)

    errors = _hammer(engine, plain)
    assert errors and all(is_busy(e) for e in errors if isinstance(e, OperationalError))
    assert _count(engine) == WRITERS * WRITES_EACH - len(errors)
    engine.dispose()


def test_write_transaction_retries_until_every_write_is_stored(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    factory = make_session_factory(engine)
    patient = BusyRetry(attempts=30, first_delay_s=0.02, max_delay_s=0.2)

    errors = _hammer(engine, lambda name: write_transaction(factory, _slow_insert(name), patient))

    assert errors == []
    assert _count(engine) == WRITERS * WRITES_EACH
    with engine.connect() as connection:
        per_writer = dict(
            connection.execute(select(rows.c.writer, func.count()).group_by(rows.c.writer)).all()
        )
    assert per_writer == {f"w{i}": WRITES_EACH for i in range(WRITERS)}
    engine.dispose()


def test_only_busy_errors_are_retried_and_retries_are_bounded() -> None:
    locked = OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked"))
    other = OperationalError("INSERT", {}, sqlite3.OperationalError("no such table: x"))
    assert is_busy(locked) and not is_busy(other)
    calls: list[int] = []

    def fails_with(error: OperationalError) -> Callable[[], None]:
        def attempt() -> None:
            calls.append(1)
            raise error

        return attempt

    with pytest.raises(OperationalError, match="no such table"):
        retry_on_busy(fails_with(other))
    assert len(calls) == 1
    calls.clear()
    quick = BusyRetry(attempts=3, first_delay_s=0.001, max_delay_s=0.001)
    with pytest.raises(OperationalError, match="database is locked"):
        retry_on_busy(fails_with(locked), quick)
    assert len(calls) == 3


GATE_TIMEOUT_S = 0.3
HOLD_IN_ANOTHER_PROCESS = """
import sys
from sqlalchemy import text
from prelabel.database import make_engine
engine = make_engine(sys.argv[1])
with engine.begin() as connection:
    connection.execute(text("INSERT INTO rows (writer) VALUES ('other process')"))
    print("written", flush=True)
    sys.stdin.read()  # until the test closes our stdin
"""


def _gated_engine(tmp_path: Path) -> Engine:
    engine = make_engine(f"sqlite:///{tmp_path / 'gate.db'}", busy_timeout_s=GATE_TIMEOUT_S)
    metadata.create_all(engine)
    return engine


def test_writers_of_one_process_wait_on_its_write_gate_not_in_sqlite(tmp_path: Path) -> None:
    """While one thread's transaction has written, another thread's write waits on the
    process's gate (which then times out like SQLite's busy timeout), not in SQLite."""
    engine = _gated_engine(tmp_path)
    factory = make_session_factory(engine)
    written, finish = threading.Event(), threading.Event()

    def holder() -> None:
        with transaction(factory) as session:
            session.execute(insert(rows).values(writer="holder"))
            written.set()
            finish.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    assert written.wait(10)
    try:
        waiting = pytest.raises(OperationalError, match="write gate: another thread")
        with waiting as caught, transaction(factory) as session:
            session.execute(insert(rows).values(writer="waiter"))
        assert is_busy(caught.value)
        with factory() as session:  # reads never wait for the gate
            assert session.scalar(select(func.count()).select_from(rows)) == 0
    finally:
        finish.set()
        thread.join()
    write_transaction(factory, lambda session: session.execute(insert(rows).values(writer="next")))
    assert _count(engine) == 2
    engine.dispose()


def test_writers_of_other_processes_wait_on_the_gate_file(tmp_path: Path) -> None:
    engine = _gated_engine(tmp_path)
    other = subprocess.Popen(
        [sys.executable, "-c", HOLD_IN_ANOTHER_PROCESS, str(engine.url)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "written"
        with pytest.raises(OperationalError, match="write gate: another process"):
            write_transaction(
                make_session_factory(engine),
                lambda session: session.execute(insert(rows).values(writer="here")),
                BusyRetry(attempts=1),
            )
    finally:
        assert other.stdin is not None and other.stdout is not None
        other.stdin.close()
        other.stdout.close()
        assert other.wait(30) == 0
    write_transaction(
        make_session_factory(engine),
        lambda session: session.execute(insert(rows).values(writer="here")),
    )
    assert _count(engine) == 2
    engine.dispose()


def test_the_write_gate_is_released_however_a_transaction_ends(tmp_path: Path) -> None:
    """Commit, rollback on an error, a failed statement, a session closed without commit:
    after each, the next write gets the gate at once (a leak would time out)."""
    engine = _gated_engine(tmp_path)
    factory = make_session_factory(engine)

    def write(writer: str, row_id: int | None = None) -> None:
        with transaction(factory) as session:
            session.execute(insert(rows).values(id=row_id, writer=writer))

    write("committed", 1)
    with pytest.raises(RuntimeError), transaction(factory) as session:
        session.execute(insert(rows).values(writer="rolled back"))
        raise RuntimeError("the handler failed")
    with pytest.raises(IntegrityError):
        write("duplicate", 1)
    session = factory()
    session.execute(insert(rows).values(writer="never committed"))
    session.close()
    errors: list[BaseException] = []

    def from_another_thread() -> None:
        try:
            write("other thread")
        except OperationalError as exc:
            errors.append(exc)

    thread = threading.Thread(target=from_another_thread)
    thread.start()
    thread.join()
    assert errors == []
    write("last")
    with engine.connect() as connection:
        writers = set(connection.execute(select(rows.c.writer)).scalars())
    assert writers == {"committed", "other thread", "last"}
    engine.dispose()
