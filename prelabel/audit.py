"""The audit trail: promotions (manual and by the gate), pins, policy changes — who, what, when.

Corrections are not repeated here: each is kept with its annotator, source, time and what it
superseded (``prelabel.corrections``).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import select
from sqlalchemy.orm import Session

from prelabel.tables import AuditEventRow

logger = logging.getLogger(__name__)


class AuditEvent(BaseModel):
    """One recorded action."""

    model_config = ConfigDict(frozen=True)

    id: str
    project_id: str
    actor: str
    action: str
    details: dict[str, Any]
    created_at: datetime


def record_event(
    session: Session, project_id: str, *, actor: str, action: str, details: dict[str, Any]
) -> AuditEvent:
    """Append an event to the project's audit trail."""
    row = AuditEventRow(project_id=project_id, actor=actor, action=action, details=details)
    session.add(row)
    session.flush()
    logger.info("audit: %s %s on project %s %s", actor, action, project_id, details)
    return AuditEvent.model_validate(row, from_attributes=True)


def list_events(session: Session, project_id: str) -> list[AuditEvent]:
    """The project's audit trail, newest first."""
    rows = session.scalars(
        select(AuditEventRow)
        .where(AuditEventRow.project_id == project_id)
        .order_by(AuditEventRow.created_at.desc())
    )
    return [AuditEvent.model_validate(row, from_attributes=True) for row in rows]
