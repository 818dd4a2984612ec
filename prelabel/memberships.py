"""Project members and their roles; every change is audited."""

from __future__ import annotations

import logging
from datetime import datetime

from pydantic import BaseModel, ConfigDict
from sqlalchemy import select
from sqlalchemy.orm import Session

from prelabel.access import Role
from prelabel.audit import AuditAction, record_audit
from prelabel.errors import MemberNotFound, UserNotFound
from prelabel.projects import Project
from prelabel.tables import MembershipRow, UserRow

logger = logging.getLogger(__name__)


class Member(BaseModel):
    """A user's role in a project."""

    model_config = ConfigDict(frozen=True)

    user: str
    role: Role
    created_at: datetime


def _user_id(session: Session, name: str) -> str:
    user_id = session.scalar(select(UserRow.id).where(UserRow.name == name))
    if user_id is None:
        raise UserNotFound(name)
    return user_id


def set_member(session: Session, project: Project, user: str, role: Role, *, actor: str) -> Member:
    """Make the user a member with ``role`` (or change its role); audited."""
    user_id = _user_id(session, user)
    row = session.get(MembershipRow, (project.id, user_id))
    previous = row.role if row is not None else None
    if row is None:
        row = MembershipRow(project_id=project.id, user_id=user_id, role=role.value)
        session.add(row)
    else:
        row.role = role.value
    session.flush()
    record_audit(
        session,
        project.id,
        actor=actor,
        action=AuditAction.MEMBER_SET,
        details={"user_id": user_id, "role": role.value, "previous_role": previous},
    )
    logger.info("project %s: user %s is %s (was %s)", project.id, user_id, role, previous)
    return Member(user=user, role=role, created_at=row.created_at)


def list_members(session: Session, project: Project) -> list[Member]:
    """The project's members, by user name."""
    rows = session.execute(
        select(UserRow.name, MembershipRow.role, MembershipRow.created_at)
        .join(UserRow, UserRow.id == MembershipRow.user_id)
        .where(MembershipRow.project_id == project.id)
        .order_by(UserRow.name)
    )
    return [Member(user=name, role=Role(role), created_at=at) for name, role, at in rows]


def remove_member(session: Session, project: Project, user: str, *, actor: str) -> None:
    """Take the user out of the project (audited).

    Raises:
        UserNotFound, MemberNotFound: No such user, or not a member.
    """
    user_id = _user_id(session, user)
    row = session.get(MembershipRow, (project.id, user_id))
    if row is None:
        raise MemberNotFound(user)
    session.delete(row)
    record_audit(
        session,
        project.id,
        actor=actor,
        action=AuditAction.MEMBER_REMOVED,
        details={"user_id": user_id, "role": row.role},
    )
    logger.info("project %s: user %s removed", project.id, user_id)
