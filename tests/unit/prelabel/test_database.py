"""Alembic migrations against the ORM, migrate() idempotence, engine settings, UTC timestamps."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, event, func, insert, inspect, select, text
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import Session
from sqlalchemy.pool import QueuePool

import prelabel
from prelabel.database import (
    after_commit,
    make_engine,
    make_session_factory,
    migrate,
    transaction,
)
from prelabel.errors import ValidationFailed
from prelabel.settings import StorageSettings
from prelabel.tables import Base, ImageRow, ProjectRow
from prelabel.workspace import open_workspace

MIGRATIONS = Path(prelabel.__file__).parent / "migrations"


@pytest.fixture
def engine(empty_database_url: str) -> Iterator[Engine]:
    """An engine on an empty database of the backend under test (SQLite or PostgreSQL)."""
    created = make_engine(empty_database_url)
    yield created
    created.dispose()


@pytest.fixture
def migrated(storage_settings: StorageSettings) -> Iterator[Engine]:
    """An engine on a database already migrated to head (for tests of the rest)."""
    created = make_engine(storage_settings.resolved_database_url)
    yield created
    created.dispose()


def _alembic(engine: Engine, action: str, revision: str) -> None:
    """Run ``alembic upgrade|downgrade`` the way ``migrate`` configures it."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        getattr(command, action)(config, revision)


def _schema_diff(engine: Engine) -> list[Any]:
    with engine.connect() as connection:
        return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))


def _revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def _head() -> str | None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config).get_current_head()


def _add_project_with_image(engine: Engine) -> None:
    """A project with one image, in SQL that any revision from 0002 on accepts (the ORM
    knows only the newest columns)."""
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO projects (id, name, label_schema, acceptance_threshold, "
                "training_policy, created_at) VALUES ('p1', 'p', '{}', 0.01, '{}', "
                "'2026-01-01 00:00:00')"
            )
        )
        connection.execute(
            text(
                "INSERT INTO images (id, project_id, filename, width, height, channels, sha256, "
                "blob_key, created_at) VALUES ('i1', 'p1', 'a.png', 1, 1, 1, :sha, 'k', "
                "'2026-01-01 00:00:00')"
            ),
            {"sha": "0" * 64},
        )


def _count(engine: Engine, table: type[Base]) -> int:
    with make_session_factory(engine)() as session:
        return int(session.scalar(select(func.count()).select_from(table)) or 0)


def test_migrating_a_fresh_database_gives_exactly_the_orm_schema(engine: Engine) -> None:
    migrate(engine)

    assert _schema_diff(engine) == []
    assert _revision(engine) == _head()


def test_downgrade_to_base_and_upgrade_again(engine: Engine) -> None:
    migrate(engine)

    _alembic(engine, "downgrade", "base")
    tables_at_base = set(inspect(engine).get_table_names())
    _alembic(engine, "upgrade", "head")

    assert tables_at_base == {"alembic_version"}
    assert _revision(engine) == _head()
    assert _schema_diff(engine) == []


def test_migrate_twice_is_a_no_op(engine: Engine) -> None:
    migrate(engine)
    _add_project_with_image(engine)
    statements: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement.lstrip().split(None, 1)[0].upper())

    migrate(engine)

    assert statements  # it did look at the revision
    assert not {"CREATE", "ALTER", "DROP", "INSERT", "UPDATE", "DELETE"} & set(statements)
    assert _revision(engine) == _head()
    assert (_count(engine, ProjectRow), _count(engine, ImageRow)) == (1, 1)


def test_downgrading_one_revision_keeps_the_data(engine: Engine) -> None:
    migrate(engine)
    _add_project_with_image(engine)

    _alembic(engine, "downgrade", "0001")

    with engine.connect() as connection:
        projects = connection.scalar(text("SELECT count(*) FROM projects"))
        images = connection.scalar(text("SELECT count(*) FROM images"))
    assert (projects, images) == (1, 1)


def test_engine_settings_of_the_backend_and_cascading_deletes(
    engine: Engine, tmp_path: Path
) -> None:
    migrate(engine)

    if engine.dialect.name == "sqlite":
        with engine.connect() as connection:
            journal = connection.scalar(text("PRAGMA journal_mode"))
            foreign_keys = connection.scalar(text("PRAGMA foreign_keys"))
            busy_timeout = connection.scalar(text("PRAGMA busy_timeout"))
        assert (tmp_path / "nested" / "prelabel.db").is_file()
        assert (journal, foreign_keys, busy_timeout) == ("wal", 1, 30000)
        # SQLite connections are uncapped: a request never waits for a free one
        assert isinstance(engine.pool, QueuePool) and engine.pool._max_overflow == -1
    else:
        assert engine.dialect.name == "postgresql"
        assert isinstance(engine.pool, QueuePool)
        assert (engine.pool.size(), engine.pool._max_overflow) == (5, 10)
        assert engine.pool._pre_ping

    # Deleting a project cascades to its rows, as ForeignKey(ondelete=CASCADE) promises.
    _add_project_with_image(engine)
    with transaction(make_session_factory(engine)) as session:
        session.execute(text("DELETE FROM projects"))
    assert _count(engine, ImageRow) == 0


def test_pool_limits_come_from_the_storage_settings(empty_database_url: str) -> None:
    settings = StorageSettings(
        database_url=empty_database_url,
        db_pool_size=2,
        db_max_overflow=1,
        db_pool_timeout_s=4.5,
        db_pool_recycle_s=60,
    )
    workspace = open_workspace(settings)
    try:
        pool = workspace.engine.pool
        with workspace.engine.connect() as connection:
            assert connection.scalar(text("SELECT 1")) == 1
        if workspace.engine.dialect.name == "postgresql":  # SQLite keeps SQLAlchemy's own pool
            assert isinstance(pool, QueuePool)
            assert (pool.size(), pool._max_overflow, pool._timeout, pool._recycle) == (
                2,
                1,
                4.5,
                60,
            )
    finally:
        workspace.engine.dispose()


def test_transaction_rolls_back_on_error(migrated: Engine) -> None:
    factory = make_session_factory(migrated)

    with pytest.raises(RuntimeError), transaction(factory) as session:
        session.add(ProjectRow(name="gone", label_schema={}, training_policy={}))
        session.flush()
        raise RuntimeError("boom")

    assert _count(migrated, ProjectRow) == 0


def test_text_holding_nul_is_refused_on_every_backend_and_nothing_is_stored(
    migrated: Engine,
) -> None:
    # PostgreSQL text cannot hold NUL (psycopg raises DataError, a 500 for a request),
    # while SQLite stored it or looked it up: every statement refuses it, on both.
    factory = make_session_factory(migrated)
    refused = pytest.raises(ValidationFailed, match=r"NUL character \(U\+0000\).*'a\\x00b'")
    with refused, transaction(factory) as session:
        session.add(ProjectRow(name="fine", label_schema={}, training_policy={}))
        session.add(ProjectRow(name="a\x00b", label_schema={}, training_policy={}))
    rows = [{"name": name, "label_schema": {}, "training_policy": {}} for name in ("x", "a\x00b")]
    with refused, transaction(factory) as session:
        session.execute(insert(ProjectRow), rows)
    with refused, factory() as session:
        session.scalars(select(ProjectRow).where(ProjectRow.name == "a\x00b")).all()
    with refused, migrated.connect() as connection:
        connection.execute(text("SELECT :v"), {"v": "a\x00b"})

    assert _count(migrated, ProjectRow) == 0


def test_after_commit_actions_run_once_committed_in_their_own_transaction(
    migrated: Engine,
) -> None:
    factory = make_session_factory(migrated)
    seen: list[tuple[int, bool]] = []

    def action(session: Session) -> None:
        # Its own transaction: the committed row is visible and it may write.
        seen.append((_count(migrated, ProjectRow), session.in_transaction()))
        session.add(ProjectRow(name="after", label_schema={}, training_policy={}))

    with transaction(factory) as session:
        session.add(ProjectRow(name="first", label_schema={}, training_policy={}))
        after_commit(session, action)
        session.flush()
        assert seen == []

    assert seen == [(1, True)]
    assert _count(migrated, ProjectRow) == 2
    with transaction(factory) as session:  # the same session factory: nothing runs again
        session.add(ProjectRow(name="third", label_schema={}, training_policy={}))
    assert len(seen) == 1


def test_after_commit_actions_never_run_after_a_rollback_and_failures_are_logged(
    migrated: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    factory = make_session_factory(migrated)
    ran: list[str] = []

    with pytest.raises(RuntimeError), transaction(factory) as session:
        after_commit(session, lambda _s: ran.append("rolled back"))
        raise RuntimeError("boom")
    with factory() as session:
        with session.begin():
            after_commit(session, lambda _s: ran.append("rolled back too"))
            session.rollback()
        with session.begin():  # the next transaction of the same session
            session.add(ProjectRow(name="p", label_schema={}, training_policy={}))

    def broken(_session: Session) -> None:
        raise ValueError("policy broke")

    with transaction(factory) as session:
        after_commit(session, broken)
        after_commit(session, lambda _s: ran.append("after the broken one"))
        session.add(ProjectRow(name="kept", label_schema={}, training_policy={}))

    assert ran == ["after the broken one"]
    assert _count(migrated, ProjectRow) == 2
    assert "an action after commit failed" in caplog.text and "policy broke" in caplog.text


def test_after_commit_refuses_a_session_that_would_never_run_it(migrated: Engine) -> None:
    with Session(migrated) as session, pytest.raises(RuntimeError, match="make_session_factory"):
        after_commit(session, lambda _s: None)


def test_timestamps_are_stored_as_utc_and_read_back_aware(migrated: Engine) -> None:
    factory = make_session_factory(migrated)
    local = datetime(2026, 3, 1, 12, 30, tzinfo=timezone(timedelta(hours=2)))

    with transaction(factory) as session:
        session.add(ProjectRow(name="p", label_schema={}, training_policy={}, created_at=local))
    with factory() as session:
        stored = session.scalars(select(ProjectRow.created_at)).one()

    assert stored == local
    assert stored.tzinfo is not None and stored.utcoffset() == timedelta(0)
    assert stored.replace(tzinfo=None) == datetime(2026, 3, 1, 10, 30)


def test_naive_timestamps_are_refused(migrated: Engine) -> None:
    with (
        pytest.raises(StatementError, match="naive datetime"),
        transaction(make_session_factory(migrated)) as session,
    ):
        session.add(
            ProjectRow(
                name="p", label_schema={}, training_policy={}, created_at=datetime(2026, 1, 1)
            )
        )


def test_renaming_the_queue_table_keeps_its_jobs(engine: Engine) -> None:
    _alembic(engine, "upgrade", "0004")
    _add_project_with_image(engine)
    with engine.begin() as connection:
        project_id = connection.scalar(text("SELECT id FROM projects"))
        connection.execute(
            text(
                "INSERT INTO training_runs (id, project_id, status, task, trigger, kind, "
                "progress, attempts, created_at) VALUES ('j1', :project, 'queued', 'drafts', "
                "'policy', 'incremental', '{}', 0, '2026-01-01 00:00:00')"
            ),
            {"project": project_id},
        )

    _alembic(engine, "upgrade", "head")
    with engine.connect() as connection:
        upgraded = connection.execute(text("SELECT id, task FROM jobs")).all()
    _alembic(engine, "downgrade", "0004")
    with engine.connect() as connection:
        downgraded = connection.execute(text("SELECT id, task FROM training_runs")).all()

    assert upgraded == downgraded == [("j1", "drafts")]
