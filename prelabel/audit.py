"""The audit trail: every access to client data and every change of who may access it.

Each entry is written by the function that performs the action, in the same
transaction (an action that fails leaves no entry; an entry never exists without
its action). Reads change nothing and have no transaction of their own: the service
takes their entries at the time of the read and appends them in batches
(:mod:`prelabel.deferred_writes`). Entries hold ids, never content: no pixels, file names or hashes.
The table is append-only: database triggers refuse updates and deletes
(migration ``0006``), and nothing here offers either.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from prelabel.tables import AuditEventRow

logger = logging.getLogger(__name__)


class AuditAction(StrEnum):
    """What an audit entry records."""

    IMAGE_UPLOADED = "image_uploaded"
    IMAGE_READ = "image_read"
    DRAFT_SERVED = "draft_served"
    DRAFT_REFINED = "draft_refined"
    CORRECTION_WRITTEN = "correction_written"
    CORRECTION_READ = "correction_read"
    CORRECTION_WITHDRAWN = "correction_withdrawn"
    CORRECTION_REVIEWED = "correction_reviewed"
    EXPORTED = "exported"
    IMPORTED = "imported"
    TRAINING_QUEUED = "training_queued"
    BULK_DRAFTS_QUEUED = "bulk_drafts_queued"
    BULK_DRAFTS_CANCELLED = "bulk_drafts_cancelled"
    PROMOTE = "promote"
    PIN = "pin"
    UNPIN = "unpin"
    SET_TRAINING_POLICY = "set_training_policy"
    PROJECT_SETTINGS_CHANGED = "project_settings_changed"
    PROJECT_CREATED = "project_created"
    PROJECT_ERASED = "project_erased"
    IMAGE_ERASED = "image_erased"
    MEMBER_SET = "member_set"
    MEMBER_REMOVED = "member_removed"
    USER_ADDED = "user_added"
    TOKEN_ISSUED = "token_issued"
    TOKENS_REVOKED = "tokens_revoked"
    BINDING_SET = "binding_set"


class AuditEvent(BaseModel):
    """One recorded action; ``project_id`` is None for global ones (users, tokens)."""

    model_config = ConfigDict(frozen=True, from_attributes=True)

    id: str
    project_id: str | None
    image_id: str | None
    actor: str
    action: str
    details: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class AuditQuery:
    """Filters of an audit listing; None matches everything."""

    project_id: str | None = None
    actor: str | None = None
    action: str | None = None
    image_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int | None = None


@dataclass(frozen=True)
class PendingAudit:
    """An entry taken when a read happened, appended later in a batch
    (:mod:`prelabel.deferred_writes`)."""

    project_id: str | None
    image_id: str | None
    actor: str
    action: AuditAction
    details: dict[str, Any]
    created_at: datetime


def _row(
    project_id: str | None,
    actor: str,
    action: AuditAction,
    details: dict[str, Any] | None,
    image_id: str | None,
    created_at: datetime | None = None,
) -> AuditEventRow:
    row = AuditEventRow(
        project_id=project_id,
        image_id=image_id,
        actor=actor,
        action=action.value,
        details=details or {},
    )
    if created_at is not None:
        row.created_at = created_at
    return row


def record_audit(
    session: Session,
    project_id: str | None,
    *,
    actor: str,
    action: AuditAction,
    details: dict[str, Any] | None = None,
    image_id: str | None = None,
) -> AuditEvent:
    """Append an entry, in the caller's transaction."""
    row = _row(project_id, actor, action, details, image_id)
    session.add(row)
    session.flush()
    log_audit(actor, action, project_id, image_id)
    return AuditEvent.model_validate(row)


def log_audit(
    actor: str, action: AuditAction, project_id: str | None, image_id: str | None
) -> None:
    """The log line of an audit entry, whether it is written now or batched."""
    logger.info("audit: %s %s project=%s image=%s", actor, action, project_id, image_id)


def append_audits(session: Session, entries: Sequence[PendingAudit]) -> None:
    """Append entries taken earlier, each with the time it was taken, in the caller's
    transaction."""
    session.add_all(
        _row(e.project_id, e.actor, e.action, e.details, e.image_id, e.created_at) for e in entries
    )


def _filtered(query: AuditQuery) -> Select[AuditEventRow]:
    statement = select(AuditEventRow)
    conditions = {
        AuditEventRow.project_id: query.project_id,
        AuditEventRow.actor: query.actor,
        AuditEventRow.action: query.action,
        AuditEventRow.image_id: query.image_id,
    }
    for column, value in conditions.items():
        if value is not None:
            statement = statement.where(column == value)
    if query.since is not None:
        statement = statement.where(AuditEventRow.created_at >= query.since)
    if query.until is not None:
        statement = statement.where(AuditEventRow.created_at < query.until)
    statement = statement.order_by(AuditEventRow.created_at.desc(), AuditEventRow.id)
    return statement.limit(query.limit) if query.limit is not None else statement


def list_events(session: Session, query: AuditQuery) -> list[AuditEvent]:
    """The matching entries, newest first."""
    return [AuditEvent.model_validate(row) for row in session.scalars(_filtered(query))]


CSV_COLUMNS = ("created_at", "project_id", "image_id", "actor", "action", "details", "id")


def events_csv(events: list[AuditEvent]) -> str:
    """The entries as CSV, one row each; ``details`` as compact JSON."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for event in events:
        writer.writerow(
            [
                event.created_at.isoformat(),
                event.project_id or "",
                event.image_id or "",
                event.actor,
                event.action,
                json.dumps(event.details, sort_keys=True, separators=(",", ":")),
                event.id,
            ]
        )
    return out.getvalue()
