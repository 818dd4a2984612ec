"""Deferred writes: read audits and token uses are kept with their time and written in one
batch; a failed batch stays pending; the periodic flush writes on its own and on stop."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from prelabel.accounts import add_user, hash_token
from prelabel.audit import AuditAction, AuditQuery, list_events
from prelabel.database import make_engine, make_session_factory, transaction
from prelabel.deferred_writes import DeferredWrites, PeriodicFlush
from prelabel.tables import ApiTokenRow, utcnow
from prelabel.workspace import Workspace


def _token_id(workspace: Workspace, name: str) -> str:
    with transaction(workspace.sessions) as session:
        token = add_user(session, name, is_admin=False, actor="t").token
        row = session.scalar(select(ApiTokenRow).where(ApiTokenRow.token_hash == hash_token(token)))
        assert row is not None
        return row.id


def _reads(workspace: Workspace) -> list[tuple[str, str | None, str]]:
    with workspace.sessions() as session:
        events = list_events(session, AuditQuery(project_id="p1"))
    return [(e.action, e.image_id, e.actor) for e in events]


def test_reads_are_written_at_flush_with_the_time_they_happened(workspace: Workspace) -> None:
    writes = DeferredWrites()
    before = utcnow()
    writes.audit("p1", actor="ana", action=AuditAction.DRAFT_SERVED, image_id="i1")
    writes.audit("p1", actor="bo", action=AuditAction.IMAGE_READ, image_id="i2")
    taken = utcnow()
    assert _reads(workspace) == [] and writes.pending == 2

    assert writes.flush(workspace.sessions) == 2

    assert writes.pending == 0 and writes.flush(workspace.sessions) == 0
    assert sorted(_reads(workspace)) == [
        ("draft_served", "i1", "ana"),
        ("image_read", "i2", "bo"),
    ]
    with workspace.sessions() as session:
        times = [e.created_at for e in list_events(session, AuditQuery(project_id="p1"))]
    assert all(before <= t <= taken for t in times)


def test_token_uses_keep_the_latest_time_and_never_move_back(workspace: Workspace) -> None:
    token_id = _token_id(workspace, "ana")
    writes = DeferredWrites()
    now = utcnow()
    writes.token_used(token_id, now - timedelta(seconds=5))
    writes.token_used(token_id, now)
    writes.token_used(token_id, now - timedelta(seconds=9))
    assert writes.pending == 1
    writes.flush(workspace.sessions)
    writes.token_used(token_id, now - timedelta(minutes=5))  # an older use, flushed late
    writes.flush(workspace.sessions)
    with workspace.sessions() as session:
        row = session.get(ApiTokenRow, token_id)
        assert row is not None and row.last_used_at == now


def test_a_failed_flush_keeps_everything_pending(workspace: Workspace, tmp_path: Path) -> None:
    token_id = _token_id(workspace, "cy")
    writes = DeferredWrites()
    writes.audit("p1", actor="cy", action=AuditAction.CORRECTION_READ, image_id="i3")
    writes.token_used(token_id, utcnow())
    unmigrated = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")  # no tables: the write fails

    with pytest.raises(OperationalError):
        writes.flush(make_session_factory(unmigrated))

    assert writes.pending == 2
    writes.audit("p1", actor="cy", action=AuditAction.IMAGE_READ, image_id="i4")
    assert writes.flush(workspace.sessions) == 3
    assert sorted(_reads(workspace)) == [
        ("correction_read", "i3", "cy"),
        ("image_read", "i4", "cy"),
    ]
    unmigrated.dispose()


def test_the_periodic_flush_writes_on_its_own_and_when_stopped(workspace: Workspace) -> None:
    writes = DeferredWrites()
    periodic = PeriodicFlush(writes, workspace.sessions, interval_s=0.05)
    periodic.start()
    writes.audit("p1", actor="ana", action=AuditAction.DRAFT_SERVED, image_id="i1")
    deadline = time.monotonic() + 10
    while not _reads(workspace) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _reads(workspace) == [("draft_served", "i1", "ana")]
    periodic.stop()

    idle = PeriodicFlush(writes, workspace.sessions, interval_s=3600)
    idle.start()
    writes.audit("p1", actor="bo", action=AuditAction.DRAFT_SERVED, image_id="i2")
    idle.stop()  # long before its first period: stopping writes what is pending
    assert writes.pending == 0
    assert ("draft_served", "i2", "bo") in _reads(workspace)
