"""The training job queue, kept in the database so that service and worker never share a process.

The service enqueues; a worker claims atomically (a conditional UPDATE that only
one worker can win), runs, and records the outcome. One job per project runs at
a time, and a queued job absorbs further requests (coalescing) instead of
piling up duplicates.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from typing import Any, cast

from pydantic import BaseModel, ConfigDict
from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session, aliased, sessionmaker

from prelabel.errors import ConflictError, TrainingRunNotFound
from prelabel.tables import ProjectRow, TrainingRunRow, utcnow

logger = logging.getLogger(__name__)


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class RunTrigger(StrEnum):
    MANUAL = "manual"
    POLICY = "policy"


class JobTask(StrEnum):
    """What a queued job does: train a model, or precompute drafts with the serving one."""

    TRAIN = "train"
    DRAFTS = "drafts"


class RunKind(StrEnum):
    INCREMENTAL = "incremental"
    FULL = "full"


class TrainingRun(BaseModel):
    """A training job and what came of it."""

    model_config = ConfigDict(frozen=True)

    id: str
    project_id: str
    status: RunStatus
    task: JobTask
    trigger: RunTrigger
    kind: RunKind
    model_version: str | None
    decision: str | None
    error: str | None
    progress: dict[str, Any]
    attempts: int
    retry_of: str | None
    candidate_miou: float | None
    serving_miou: float | None
    train_s: float | None
    worker: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


def _to_run(row: TrainingRunRow) -> TrainingRun:
    return TrainingRun.model_validate(row, from_attributes=True)


def lock_project(session: Session, project_id: str) -> None:
    """Serialise queue changes of one project until the transaction ends.

    A no-op UPDATE of the project row takes the row lock on PostgreSQL and the
    database write lock on SQLite, so check-then-insert cannot interleave.
    """
    session.execute(update(ProjectRow).where(ProjectRow.id == project_id).values(id=ProjectRow.id))


def _enqueue(
    session: Session, project_id: str, *, task: JobTask, trigger: RunTrigger, kind: RunKind
) -> TrainingRun:
    lock_project(session, project_id)
    queued = session.scalars(
        select(TrainingRunRow).where(
            TrainingRunRow.project_id == project_id,
            TrainingRunRow.status == RunStatus.QUEUED,
            TrainingRunRow.task == task,
        )
    ).first()
    if queued is not None:
        if kind is RunKind.FULL:
            queued.kind = RunKind.FULL
        logger.info("%s job %s already queued for project %s", task, queued.id, project_id)
        return _to_run(queued)
    row = TrainingRunRow(
        project_id=project_id,
        task=task,
        trigger=trigger,
        kind=kind,
        status=RunStatus.QUEUED,
        progress={},
        attempts=0,
    )
    session.add(row)
    session.flush()
    logger.info("queued %s job %s for project %s (%s, %s)", task, row.id, project_id, trigger, kind)
    return _to_run(row)


def enqueue_training(
    session: Session, project_id: str, *, trigger: RunTrigger, kind: RunKind
) -> TrainingRun:
    """Queue a training run for the project, or return the one already queued."""
    return _enqueue(session, project_id, task=JobTask.TRAIN, trigger=trigger, kind=kind)


def enqueue_drafts(session: Session, project_id: str) -> TrainingRun:
    """Queue precomputing the serving version's drafts of every unlabelled image (coalesces)."""
    return _enqueue(
        session,
        project_id,
        task=JobTask.DRAFTS,
        trigger=RunTrigger.POLICY,
        kind=RunKind.INCREMENTAL,
    )


def _try_claim(session: Session, run_id: str, worker: str) -> TrainingRunRow | None:
    # A conditional UPDATE: of several workers racing for the run, exactly one matches.
    now = utcnow()
    running = aliased(TrainingRunRow)
    busy = select(running.project_id).where(running.status == RunStatus.RUNNING)
    result = session.execute(
        update(TrainingRunRow)
        .where(
            TrainingRunRow.id == run_id,
            TrainingRunRow.status == RunStatus.QUEUED,
            TrainingRunRow.project_id.not_in(busy),
        )
        .values(
            status=RunStatus.RUNNING,
            worker=worker,
            started_at=now,
            heartbeat_at=now,
            attempts=TrainingRunRow.attempts + 1,
        )
    )
    won = cast(CursorResult[Any], result).rowcount
    if won != 1:
        return None
    logger.info("worker %s claimed training run %s", worker, run_id)
    return session.get(TrainingRunRow, run_id, populate_existing=True)


def claim_next_run(factory: sessionmaker[Session], worker: str) -> TrainingRun | None:
    """Atomically take the oldest queued run of a project that has none running."""
    with factory() as session, session.begin():
        busy = select(TrainingRunRow.project_id).where(TrainingRunRow.status == RunStatus.RUNNING)
        candidates = session.scalars(
            select(TrainingRunRow.id)
            .where(
                TrainingRunRow.status == RunStatus.QUEUED, TrainingRunRow.project_id.not_in(busy)
            )
            .order_by(TrainingRunRow.created_at)
            .limit(5)
        ).all()
        for run_id in candidates:
            row = _try_claim(session, run_id, worker)
            if row is not None:
                return _to_run(row)
    return None


def claim_run(factory: sessionmaker[Session], run_id: str, worker: str) -> TrainingRun:
    """Claim one specific queued run (``prelabel train`` runs its own job in-process).

    Raises:
        ConflictError: the run is no longer queued (another worker took it).
    """
    with factory() as session, session.begin():
        row = _try_claim(session, run_id, worker)
        if row is None:
            raise ConflictError(f"training run {run_id} is not queued any more")
        return _to_run(row)


def update_progress(session: Session, run_id: str, progress: dict[str, Any]) -> None:
    """Record the run's progress (epoch, loss, ...) and refresh its heartbeat."""
    session.execute(
        update(TrainingRunRow)
        .where(TrainingRunRow.id == run_id)
        .values(progress=progress, heartbeat_at=utcnow())
    )


def finish_run(
    session: Session,
    run_id: str,
    *,
    status: RunStatus,
    model_version: str | None = None,
    decision: str | None = None,
    error: str | None = None,
    candidate_miou: float | None = None,
    serving_miou: float | None = None,
    train_s: float | None = None,
) -> None:
    """Mark a run succeeded or failed, with the version it produced and the decision taken."""
    session.execute(
        update(TrainingRunRow)
        .where(TrainingRunRow.id == run_id)
        .values(
            status=status,
            model_version=model_version,
            decision=decision,
            error=error,
            candidate_miou=candidate_miou,
            serving_miou=serving_miou,
            train_s=train_s,
            finished_at=utcnow(),
        )
    )
    logger.info(
        "training run %s %s (model_version=%s): %s",
        run_id,
        status,
        model_version,
        decision or error,
    )


def get_run(session: Session, project_id: str, run_id: str) -> TrainingRun:
    """The run ``run_id`` of the project; raises TrainingRunNotFound."""
    row = session.get(TrainingRunRow, run_id)
    if row is None or row.project_id != project_id:
        raise TrainingRunNotFound(run_id)
    return _to_run(row)


def list_runs(session: Session, project_id: str) -> list[TrainingRun]:
    """The project's runs, newest first."""
    rows = session.scalars(
        select(TrainingRunRow)
        .where(TrainingRunRow.project_id == project_id, TrainingRunRow.task == JobTask.TRAIN)
        .order_by(TrainingRunRow.created_at.desc())
    )
    return [_to_run(row) for row in rows]


def heartbeat(session: Session, run_id: str) -> None:
    """Record that the worker running ``run_id`` is alive."""
    session.execute(
        update(TrainingRunRow).where(TrainingRunRow.id == run_id).values(heartbeat_at=utcnow())
    )


def recover_stale_runs(
    session: Session,
    *,
    stale_after_s: float,
    worker_alive: Callable[[str], bool | None],
    max_attempts: int = 3,
) -> list[TrainingRun]:
    """Fail runs whose worker died mid-run, and queue a retry for each (up to ``max_attempts``).

    A run is stale when ``worker_alive(worker)`` says False (a dead process on
    this host) or, when that cannot be known (None), when its heartbeat is older
    than ``stale_after_s``. Nothing it produced was promoted: promotion is the
    last step of a run, in one transaction.

    Returns:
        The retries queued.
    """
    now = utcnow()
    retries: list[TrainingRun] = []
    running = session.scalars(
        select(TrainingRunRow).where(TrainingRunRow.status == RunStatus.RUNNING)
    ).all()
    for row in running:
        alive = worker_alive(row.worker or "")
        silent_s = (now - (row.heartbeat_at or row.created_at)).total_seconds()
        if alive or (alive is None and silent_s < stale_after_s):
            continue
        row.status, row.finished_at = RunStatus.FAILED, now
        row.error = f"worker {row.worker} died (no heartbeat for {silent_s:.0f} s)"
        logger.warning("training run %s: %s", row.id, row.error)
        already_queued = session.scalar(
            select(TrainingRunRow.id).where(
                TrainingRunRow.project_id == row.project_id,
                TrainingRunRow.status == RunStatus.QUEUED,
                TrainingRunRow.task == row.task,
            )
        )
        if row.attempts >= max_attempts or already_queued is not None:
            continue
        retry = TrainingRunRow(
            project_id=row.project_id,
            status=RunStatus.QUEUED,
            task=row.task,
            trigger=row.trigger,
            kind=row.kind,
            progress={},
            attempts=row.attempts,
            retry_of=row.id,
        )
        session.add(retry)
        session.flush()
        retries.append(_to_run(retry))
        logger.info("queued retry %s of training run %s", retry.id, row.id)
    return retries
