"""Tokens: random, shown once, stored as a hash, revocable, expiring; the audit trail holds."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from prelabel.accounts import (
    LAST_USED_RESOLUTION,
    TOKEN_PREFIX,
    add_user,
    authenticate,
    bootstrap_admin,
    hash_token,
    issue_token,
    list_users,
    revoke_tokens,
)
from prelabel.audit import AuditAction, AuditQuery, events_csv, list_events, record_audit
from prelabel.database import transaction
from prelabel.errors import ConflictError, UserNotFound
from prelabel.tables import ApiTokenRow, AuditEventRow, utcnow
from prelabel.workspace import Workspace


def test_a_token_is_random_shown_once_and_stored_as_its_hash(workspace: Workspace) -> None:
    with transaction(workspace.sessions) as session:
        first = add_user(session, "ana", is_admin=False, actor="t")
        second = issue_token(session, "ana", actor="t")
    assert first.token.startswith(TOKEN_PREFIX) and first.token != second.token
    assert len(first.token) - len(TOKEN_PREFIX) >= 43  # 32 random bytes, url-safe base64
    with workspace.sessions() as session:
        stored = set(session.scalars(select(ApiTokenRow.token_hash)))
        dump = "\n".join(str(r) for r in session.execute(text("SELECT * FROM api_tokens")))
    assert stored == {hash_token(first.token), hash_token(second.token)}
    assert first.token not in dump and second.token not in dump
    with transaction(workspace.sessions) as session:
        principal = authenticate(session, first.token)
    assert principal is not None and (principal.name, principal.is_admin) == ("ana", False)


def test_revoked_expired_and_unknown_tokens_do_not_authenticate(workspace: Workspace) -> None:
    with transaction(workspace.sessions) as session:
        revoked = add_user(session, "bo", is_admin=False, actor="t").token
        expiring = add_user(session, "cy", is_admin=False, actor="t", expires_in=timedelta(1))
        session.execute(
            ApiTokenRow.__table__.update()
            .where(ApiTokenRow.token_hash == hash_token(expiring.token))
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
        assert revoke_tokens(session, "bo", actor="t") == 1
    with transaction(workspace.sessions) as session:
        assert authenticate(session, revoked) is None
        assert authenticate(session, expiring.token) is None
        assert authenticate(session, TOKEN_PREFIX + "x" * 43) is None
        fresh = issue_token(session, "bo", actor="t").token
        assert authenticate(session, fresh) is not None  # a new token lets the user back in


def test_last_used_is_recorded_at_most_once_a_minute(workspace: Workspace) -> None:
    with transaction(workspace.sessions) as session:
        token = add_user(session, "di", is_admin=False, actor="t").token
    with transaction(workspace.sessions) as session:
        authenticate(session, token)
    with workspace.sessions() as session:
        (first_use,) = [u.last_used_at for u in list_users(session) if u.name == "di"]
    assert first_use is not None
    with transaction(workspace.sessions) as session:
        authenticate(session, token)
    with workspace.sessions() as session:
        (second_use,) = [u.last_used_at for u in list_users(session) if u.name == "di"]
    assert second_use == first_use  # within LAST_USED_RESOLUTION: no write
    assert timedelta(minutes=1) == LAST_USED_RESOLUTION


def test_names_are_unique_and_unknown_users_are_named(workspace: Workspace) -> None:
    with transaction(workspace.sessions) as session:
        add_user(session, "eve", is_admin=False, actor="t")
        with pytest.raises(ConflictError, match="eve"):
            add_user(session, "eve", is_admin=True, actor="t")
        with pytest.raises(UserNotFound, match="nobody"):
            revoke_tokens(session, "nobody", actor="t")


def test_bootstrap_makes_one_admin_only_on_an_empty_database(workspace: Workspace) -> None:
    with transaction(workspace.sessions) as session:
        issued = bootstrap_admin(session, actor="bootstrap")
        assert issued is not None and issued.user.is_admin and issued.user.name == "admin"
        assert bootstrap_admin(session, actor="bootstrap") is None


def test_user_and_token_changes_are_audited_with_ids_only(workspace: Workspace) -> None:
    with transaction(workspace.sessions) as session:
        issued = add_user(session, "flo", is_admin=False, actor="root")
        revoke_tokens(session, "flo", actor="root")
    with workspace.sessions() as session:
        events = list_events(session, AuditQuery(actor="root"))
    assert [e.action for e in events][::-1] == ["user_added", "token_issued", "tokens_revoked"]
    assert all(e.project_id is None for e in events)
    assert issued.token not in events_csv(events)
    assert hash_token(issued.token) not in events_csv(events)


def test_the_audit_trail_is_append_only_in_the_database(workspace: Workspace) -> None:
    with transaction(workspace.sessions) as session:
        record_audit(session, "p", actor="a", action=AuditAction.EXPORTED)
    for statement in ("UPDATE audit_events SET actor = 'x'", "DELETE FROM audit_events"):
        with pytest.raises(DBAPIError, match="append-only"), transaction(workspace.sessions) as s:
            s.execute(text(statement))
    with workspace.sessions() as session:
        assert session.scalar(select(AuditEventRow.actor)) == "a"


def test_an_action_that_fails_leaves_no_audit_entry(workspace: Workspace) -> None:
    with pytest.raises(ConflictError), transaction(workspace.sessions) as session:
        add_user(session, "gus", is_admin=False, actor="t")
        add_user(session, "gus", is_admin=False, actor="t")  # fails: the whole transaction goes
    with workspace.sessions() as session:
        assert list_events(session, AuditQuery()) == []
        assert list_users(session) == []


def test_audit_filters_and_csv(workspace: Workspace) -> None:
    with transaction(workspace.sessions) as session:
        record_audit(session, "p1", actor="a", action=AuditAction.IMAGE_READ, image_id="i1")
        record_audit(session, "p1", actor="b", action=AuditAction.IMAGE_READ, image_id="i2")
        record_audit(session, "p2", actor="a", action=AuditAction.EXPORTED, details={"images": 3})
    with workspace.sessions() as session:
        by_project = list_events(session, AuditQuery(project_id="p1"))
        by_actor = list_events(session, AuditQuery(actor="a"))
        by_image = list_events(session, AuditQuery(image_id="i2"))
        later = list_events(session, AuditQuery(since=utcnow() + timedelta(seconds=5)))
    assert {e.image_id for e in by_project} == {"i1", "i2"}
    assert {e.action for e in by_actor} == {"image_read", "exported"}
    assert [e.actor for e in by_image] == ["b"]
    assert later == []
    lines = events_csv(by_actor).splitlines()
    assert lines[0] == "created_at,project_id,image_id,actor,action,details,id"
    assert '"{""images"":3}"' in events_csv(by_actor)


def test_an_admin_whose_tokens_all_expired_does_not_count_as_one_who_can_sign_in(
    workspace: Workspace,
) -> None:
    with transaction(workspace.sessions) as session:
        stale = add_user(session, "old", is_admin=True, actor="t", expires_in=timedelta(1))
        add_user(session, "new", is_admin=True, actor="t")
        session.execute(
            ApiTokenRow.__table__.update()
            .where(ApiTokenRow.token_hash == hash_token(stale.token))
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    with transaction(workspace.sessions) as session, pytest.raises(ConflictError, match="last"):
        revoke_tokens(session, "new", actor="t")
    with transaction(workspace.sessions) as session:
        issue_token(session, "old", actor="t")
        assert revoke_tokens(session, "new", actor="t") == 1
        assert revoke_tokens(session, "old", actor="cli", keep_an_admin=False) == 2
