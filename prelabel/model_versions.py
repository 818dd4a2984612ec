"""The serving model version of each project: looked up and changed here, and only here.

Exactly one version per project serves (none before the first model). Every path
that changes it (a manual promotion or rollback, a pin, an unpin, the promotion
gate at the end of a training run) calls :func:`change_serving_version`, which in
the caller's transaction moves the ``serving`` status, queues precomputing the new
version's drafts and appends to the audit trail. The registry records themselves
(artifacts, lineage) live in ``models.registry``, which builds on this module.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import Session

from prelabel.audit import AuditAction, record_audit
from prelabel.errors import ConflictError, ModelNotFound
from prelabel.jobs import enqueue_drafts
from prelabel.projects import Project, get_project, set_pinned_version
from prelabel.tables import ModelStatus, ModelVersionRow, utcnow

logger = logging.getLogger(__name__)

GATE_ACTOR = "promotion-gate"
"""The actor recorded for promotions that the gate of a training run decides."""


class ServingAction(StrEnum):
    """How the serving version changes (the audit trail's action)."""

    PROMOTE = "promote"
    """Serve this version now: a manual promotion, a rollback, or the gate's promotion."""
    PIN = "pin"
    """Serve this version and keep it: automatic promotion stops until unpinned."""
    UNPIN = "unpin"
    """Resume automatic promotion; the serving version stays."""


@dataclass(frozen=True)
class ServingChange:
    """A requested change of a project's serving version.

    Attributes:
        action: What to do.
        version: The version it concerns (``v3``).
        actor: Who asks (a person, or :data:`GATE_ACTOR`); kept in the audit trail.
        reason: Why; kept in the audit trail and, for a promotion, on the version.
        training_run_id: The run whose gate decided, for automatic promotions.
    """

    action: ServingAction
    version: str
    actor: str
    reason: str = ""
    training_run_id: str | None = None

    @property
    def automatic(self) -> bool:
        """Whether the promotion gate decided (rather than a person)."""
        return self.actor == GATE_ACTOR

    def version_reason(self) -> str:
        """The reason stored on the version that starts serving."""
        if self.automatic:
            return self.reason
        verb = "pinned" if self.action is ServingAction.PIN else "manual promotion"
        return f"{verb} by {self.actor}: {self.reason}".rstrip(": ")


def _serving(project_id: str) -> tuple[ColumnElement[bool], ...]:
    """Which registry row serves the project (at most one has status ``serving``)."""
    return (
        ModelVersionRow.project_id == project_id,
        ModelVersionRow.status == ModelStatus.SERVING,
    )


def serving_version_row(session: Session, project_id: str) -> ModelVersionRow | None:
    """The registry row of the version serving the project, or None before the first model.

    With :func:`serving_version_name`, the one serving-version lookup (``_serving``);
    ``models.registry.serving_version`` wraps it.
    """
    return session.scalar(select(ModelVersionRow).where(*_serving(project_id)))


def serving_version_name(session: Session, project_id: str) -> str | None:
    """The name (``v3``) of the version serving the project, or None before the first model.

    Reads the name alone: the row's JSON (training ids, metrics) grows with the project,
    and queues, metrics and stored drafts look the name up at every request.
    """
    return session.scalar(select(ModelVersionRow.version).where(*_serving(project_id)))


def version_row(session: Session, project_id: str, version: str) -> ModelVersionRow:
    """The project's version ``version``; raises ModelNotFound."""
    row = session.scalar(
        select(ModelVersionRow).where(
            ModelVersionRow.project_id == project_id, ModelVersionRow.version == version
        )
    )
    if row is None:
        raise ModelNotFound(version)
    return row


def _make_serving(session: Session, project_id: str, version: str, reason: str) -> None:
    session.execute(
        update(ModelVersionRow)
        .where(
            ModelVersionRow.project_id == project_id,
            ModelVersionRow.status == ModelStatus.SERVING,
            ModelVersionRow.version != version,
        )
        .values(status=ModelStatus.RETIRED)
    )
    session.execute(
        update(ModelVersionRow)
        .where(ModelVersionRow.project_id == project_id, ModelVersionRow.version == version)
        .values(status=ModelStatus.SERVING, reason=reason, promoted_at=utcnow())
    )
    # Drafts of the new version are precomputed ahead of annotators (bulk pre-labeling).
    enqueue_drafts(session, project_id)


def _check_allowed(project: Project, change: ServingChange) -> None:
    pinned = project.pinned_version
    if change.action is ServingAction.PROMOTE and pinned not in (None, change.version):
        raise ConflictError(f"project is pinned to {pinned}; unpin it first")
    if change.action is ServingAction.UNPIN and pinned != change.version:
        raise ConflictError(f"{change.version} is not pinned (pinned: {pinned})")


def change_serving_version(session: Session, project_id: str, change: ServingChange) -> None:
    """Promote, pin or unpin a version, in the caller's transaction.

    A promotion (or a pin of a version that does not serve yet) retires the
    previous serving version, makes ``change.version`` serve and queues
    precomputing its drafts; a pin also freezes automatic promotion, an unpin
    resumes it. Every change is appended to the audit trail.

    Raises:
        ProjectNotFound: no project ``project_id``.
        ModelNotFound: the project has no version ``change.version``.
        ConflictError: a promotion of another version than the pinned one, or an
            unpin of a version that is not pinned.
    """
    project = get_project(session, project_id)
    target = version_row(session, project.id, change.version)
    _check_allowed(project, change)
    previous = serving_version_name(session, project.id)
    promotes = change.action is ServingAction.PROMOTE or (
        change.action is ServingAction.PIN and target.status != ModelStatus.SERVING
    )
    if promotes:
        _make_serving(session, project.id, change.version, change.version_reason())
    if change.action is not ServingAction.PROMOTE:
        set_pinned_version(
            session, project.id, change.version if change.action is ServingAction.PIN else None
        )
    details: dict[str, str | bool | None] = {"version": change.version, "reason": change.reason}
    if change.action is ServingAction.PROMOTE:
        details |= {"previous": previous, "automatic": change.automatic}
    if change.training_run_id is not None:
        details["training_run_id"] = change.training_run_id
    record_audit(
        session,
        project.id,
        actor=change.actor,
        action=AuditAction(change.action.value),
        details=details,
    )
    logger.info(
        "project %s: %s %s by %s (serving was %s)",
        project.id,
        change.action,
        change.version,
        change.actor,
        previous,
    )
