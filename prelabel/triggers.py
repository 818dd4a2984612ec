"""Apply a project's training policy to its current state: queue a run when the policy says so.

Applied after every correction, whichever path it came by
(:func:`prelabel.corrections.record_correction`), after every review, once the
transaction that stored it has committed (:func:`apply_policy_after_commit`), and by
idle workers (for the time-based trigger).
Queuing coalesces: while a run is queued, further triggers join it; while one
runs, at most one follow-up is queued.
"""

from __future__ import annotations

import logging

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from prelabel.database import after_commit
from prelabel.jobs import Job, JobStatus, JobTask, RunKind, RunTrigger, enqueue_training
from prelabel.model_versions import serving_version_name
from prelabel.policy import TriggerDecision, decide_trigger
from prelabel.projects import Project, list_projects
from prelabel.reviewing import trainable_clause
from prelabel.tables import CorrectionRow, JobRow, utcnow

logger = logging.getLogger(__name__)

POLICY_ACTOR = "training-policy"
"""The actor recorded for runs that the project's training policy queues."""


def _count_corrections(session: Session, project: Project, since: object = None) -> int:
    """Trainable corrections; with ``since``, those that became trainable after it
    (recorded, or approved by review)."""
    review_required = project.review.review_required
    query = select(func.count()).where(
        trainable_clause(project.id, review_required=review_required)
    )
    if since is not None:
        became = func.coalesce(CorrectionRow.reviewed_at, CorrectionRow.created_at)
        query = query.where((became if review_required else CorrectionRow.created_at) > since)
    return int(session.scalar(query) or 0)


def _runs_since_full(session: Session, project_id: str) -> int | None:
    kinds = session.scalars(
        select(JobRow.kind)
        .where(
            JobRow.project_id == project_id,
            JobRow.status == JobStatus.SUCCEEDED,
            JobRow.task == JobTask.TRAIN,
        )
        .order_by(JobRow.created_at.desc())
    ).all()
    if not kinds:
        return None
    return kinds.index(RunKind.FULL) if RunKind.FULL in kinds else len(kinds)


def evaluate_trigger(session: Session, project: Project) -> TriggerDecision:
    """What the project's policy says about training now."""
    last_run = session.scalars(
        select(JobRow)
        .where(JobRow.project_id == project.id, JobRow.task == JobTask.TRAIN)
        .order_by(JobRow.created_at.desc())
        .limit(1)
    ).first()
    has_model = serving_version_name(session, project.id) is not None
    # A run sees the corrections present when it starts; later ones are new.
    seen_until = (last_run.started_at or last_run.created_at) if last_run else None
    minutes = (utcnow() - seen_until).total_seconds() / 60 if seen_until else None
    return decide_trigger(
        project.training_policy,
        has_model=has_model,
        total_corrections=_count_corrections(session, project),
        new_corrections=_count_corrections(session, project, seen_until),
        minutes_since_last_run=minutes,
        runs_since_full=_runs_since_full(session, project.id),
    )


def maybe_enqueue_training(session: Session, project: Project) -> Job | None:
    """Queue a policy-triggered run if the policy calls for one; returns it (or None)."""
    decision = evaluate_trigger(session, project)
    if not decision.trigger:
        return None
    run = enqueue_training(
        session,
        project.id,
        trigger=RunTrigger.POLICY,
        kind=RunKind.FULL if decision.full else RunKind.INCREMENTAL,
        actor=POLICY_ACTOR,
    )
    logger.info("policy queued run %s for project %s: %s", run.id, project.id, decision.reason)
    return run


def apply_policy_after_commit(session: Session, project: Project) -> None:
    """Apply the project's training policy (:func:`maybe_enqueue_training`) once the
    caller's transaction has committed, in a transaction of its own.

    Its queries then do not lengthen the caller's write (on SQLite they held the one
    write lock for two thirds of a correction's write). If it fails, the worker's
    periodic check (:func:`enqueue_due_runs`) applies the policy later.
    """
    after_commit(session, lambda fresh: maybe_enqueue_training(fresh, project))


def enqueue_due_runs(session: Session) -> list[Job]:
    """Check every project's policy (the time-based trigger); returns the runs queued."""
    queued = [maybe_enqueue_training(session, project) for project in list_projects(session)]
    return [run for run in queued if run is not None]
