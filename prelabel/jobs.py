"""The job queue, kept in the database so that service and worker never share a process.

A :class:`Job` either trains a model (task ``train``: a training run, what
``/training-runs`` shows) or precomputes the serving version's drafts (task
``drafts``). The service enqueues; a worker claims atomically (a conditional UPDATE that only
one worker can win, over candidates read ``FOR UPDATE SKIP LOCKED`` on PostgreSQL), runs,
and records the outcome. One job per project runs at a time, and a queued job absorbs
further requests (coalescing) instead of piling up duplicates.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from typing import Any, cast

from pydantic import BaseModel, ConfigDict
from sqlalchemy import CursorResult, delete, select, update
from sqlalchemy.orm import Session, aliased, sessionmaker

from prelabel.audit import AuditAction, record_audit
from prelabel.errors import ConflictError, TrainingRunNotFound
from prelabel.tables import DraftClaimRow, JobRow, ProjectRow, utcnow
from prelabel.text import storable

logger = logging.getLogger(__name__)


class JobStatus(StrEnum):
    """Where a job is: queued, running (claimed by a worker), or finished."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class RunTrigger(StrEnum):
    """Who asked for a training run: a person (or tool), or the project's policy."""

    MANUAL = "manual"
    POLICY = "policy"


class JobTask(StrEnum):
    """What a queued job does: train a model, or draft images with the serving one (bulk
    pre-labeling, :mod:`prelabel.bulk_drafts`)."""

    TRAIN = "train"
    DRAFTS = "drafts"


class RunKind(StrEnum):
    """How a training run trains: fine-tune the serving version, or from scratch."""

    INCREMENTAL = "incremental"
    FULL = "full"


class Job(BaseModel):
    """A queued job (a training run or a drafts job) and what came of it.

    ``trigger``, ``kind``, ``model_version``, the scores and ``decision`` describe
    training runs; a drafts job leaves them at their defaults (its ``decision``
    says how many drafts it made).
    """

    model_config = ConfigDict(frozen=True)

    id: str
    project_id: str
    status: JobStatus
    task: JobTask
    trigger: RunTrigger
    kind: RunKind
    model_version: str | None
    decision: str | None
    error: str | None
    progress: dict[str, Any]
    params: dict[str, Any]
    attempts: int
    retry_of: str | None
    candidate_miou: float | None
    serving_miou: float | None
    train_s: float | None
    worker: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


def _to_job(row: JobRow) -> Job:
    return Job.model_validate(row, from_attributes=True)


def lock_project(session: Session, project_id: str) -> None:
    """Serialise queue changes of one project until the transaction ends.

    A no-op UPDATE of the project row takes the row lock on PostgreSQL and the
    database write lock on SQLite, so check-then-insert cannot interleave.
    """
    session.execute(update(ProjectRow).where(ProjectRow.id == project_id).values(id=ProjectRow.id))


def _merge_params(queued: dict[str, Any], asked: dict[str, Any]) -> dict[str, Any]:
    # A drafts job drafts every unlabelled image ({}) or a list: {} absorbs any list,
    # two lists make their union (in the order asked).
    if "image_ids" not in queued or "image_ids" not in asked:
        return {}
    merged = list(dict.fromkeys([*queued["image_ids"], *asked["image_ids"]]))
    return {"image_ids": merged}


def _enqueue(
    session: Session,
    project_id: str,
    *,
    task: JobTask,
    trigger: RunTrigger,
    kind: RunKind,
    params: dict[str, Any] | None = None,
) -> Job:
    lock_project(session, project_id)
    queued = session.scalars(
        select(JobRow).where(
            JobRow.project_id == project_id,
            JobRow.status == JobStatus.QUEUED,
            JobRow.task == task,
        )
    ).first()
    if queued is not None:
        if kind is RunKind.FULL:
            queued.kind = RunKind.FULL
        if params is not None:
            queued.params = _merge_params(queued.params or {}, params)
        logger.info("%s job %s already queued for project %s", task, queued.id, project_id)
        return _to_job(queued)
    row = JobRow(
        project_id=project_id,
        task=task,
        trigger=trigger,
        kind=kind,
        status=JobStatus.QUEUED,
        progress={},
        params=params or {},
        attempts=0,
    )
    session.add(row)
    session.flush()
    logger.info("queued %s job %s for project %s (%s, %s)", task, row.id, project_id, trigger, kind)
    return _to_job(row)


def enqueue_training(
    session: Session, project_id: str, *, trigger: RunTrigger, kind: RunKind, actor: str
) -> Job:
    """Queue a training run for the project, or return the one already queued (audited)."""
    job = _enqueue(session, project_id, task=JobTask.TRAIN, trigger=trigger, kind=kind)
    record_audit(
        session,
        project_id,
        actor=actor,
        action=AuditAction.TRAINING_QUEUED,
        details={"job_id": job.id, "trigger": trigger.value, "kind": job.kind.value},
    )
    return job


def enqueue_drafts(
    session: Session,
    project_id: str,
    *,
    image_ids: list[str] | None = None,
    trigger: RunTrigger = RunTrigger.POLICY,
) -> Job:
    """Queue a bulk drafts job: the serving version's drafts of every image without a
    correction (``image_ids`` None), or of the images listed. A queued drafts job of the
    project absorbs the request (its image list grows, or becomes "all").

    This is the one way drafts are made ahead of requests: after a promotion, after an
    upload, and when a person asks (``prelabel.bulk_drafts``).
    """
    return _enqueue(
        session,
        project_id,
        task=JobTask.DRAFTS,
        trigger=trigger,
        kind=RunKind.INCREMENTAL,
        params={} if image_ids is None else {"image_ids": list(image_ids)},
    )


def _try_claim(session: Session, job_id: str, worker: str) -> JobRow | None:
    # A conditional UPDATE: of several workers racing for the run, exactly one matches.
    now = utcnow()
    running = aliased(JobRow)
    busy = select(running.project_id).where(running.status == JobStatus.RUNNING)
    result = session.execute(
        update(JobRow)
        .where(
            JobRow.id == job_id,
            JobRow.status == JobStatus.QUEUED,
            JobRow.project_id.not_in(busy),
        )
        .values(
            status=JobStatus.RUNNING,
            worker=worker,
            started_at=now,
            heartbeat_at=now,
            attempts=JobRow.attempts + 1,
        )
    )
    won = cast(CursorResult[Any], result).rowcount
    if won != 1:
        return None
    logger.info("worker %s claimed job %s", worker, job_id)
    return session.get(JobRow, job_id, populate_existing=True)


def _lock_project_if_free(session: Session, project_id: str) -> bool:
    # PostgreSQL: the project's row lock (NO KEY: inserts that reference the project go
    # on), skipped rather than waited for while another worker claims in this project or
    # the service enqueues into it; this worker moves on. SQLite ignores FOR UPDATE: its
    # one write lock serialises claims.
    locked = session.scalar(
        select(ProjectRow.id)
        .where(ProjectRow.id == project_id)
        .with_for_update(skip_locked=True, key_share=True)
    )
    return locked is not None


def claim_next_job(factory: sessionmaker[Session], worker: str) -> Job | None:
    """Atomically take the oldest queued job of a project that has none running.

    On PostgreSQL the candidates are read ``FOR UPDATE SKIP LOCKED``, so workers
    polling together take different jobs without waiting on each other, and the
    project's row is locked before its "none running" check so that two workers
    never start two jobs of one project. The conditional UPDATE of ``_try_claim``
    stays the arbiter on every engine.
    """
    with factory() as session, session.begin():
        busy = select(JobRow.project_id).where(JobRow.status == JobStatus.RUNNING)
        candidates = session.execute(
            select(JobRow.id, JobRow.project_id)
            .where(JobRow.status == JobStatus.QUEUED, JobRow.project_id.not_in(busy))
            .order_by(JobRow.created_at)
            .limit(5)
            .with_for_update(skip_locked=True, of=JobRow)
        ).all()
        for job_id, project_id in candidates:
            if not _lock_project_if_free(session, project_id):
                continue
            row = _try_claim(session, job_id, worker)
            if row is not None:
                return _to_job(row)
    return None


def claim_job(factory: sessionmaker[Session], job_id: str, worker: str) -> Job:
    """Claim one specific queued job (``prelabel train`` runs its own job in-process).

    Raises:
        ConflictError: the run is no longer queued (another worker took it).
    """
    with factory() as session, session.begin():
        row = _try_claim(session, job_id, worker)
        if row is None:
            raise ConflictError(f"job {job_id} is not queued any more")
        return _to_job(row)


def update_progress(session: Session, job_id: str, progress: dict[str, Any]) -> None:
    """Record the job's progress (epoch, loss, ...) and refresh its heartbeat."""
    session.execute(
        update(JobRow).where(JobRow.id == job_id).values(progress=progress, heartbeat_at=utcnow())
    )


def finish_job(
    session: Session,
    job_id: str,
    *,
    status: JobStatus,
    model_version: str | None = None,
    decision: str | None = None,
    error: str | None = None,
    candidate_miou: float | None = None,
    serving_miou: float | None = None,
    train_s: float | None = None,
) -> None:
    """Mark a job succeeded or failed; a training run with the version it produced and the
    decision taken."""
    session.execute(
        update(JobRow)
        .where(JobRow.id == job_id)
        .values(
            status=status,
            model_version=model_version,
            decision=decision,
            error=None if error is None else storable(error),
            candidate_miou=candidate_miou,
            serving_miou=serving_miou,
            train_s=train_s,
            finished_at=utcnow(),
        )
    )
    logger.info(
        "job %s %s (model_version=%s): %s",
        job_id,
        status,
        model_version,
        decision or error,
    )


def release_job(session: Session, job_id: str, worker: str) -> bool:
    """Put a running job back in the queue (its worker is stopping), for any worker to take.

    Nothing it produced was promoted (promotion is a run's last step), so running it
    again from the start is safe. Returns whether the job was still this worker's.
    """
    result = session.execute(
        update(JobRow)
        .where(JobRow.id == job_id, JobRow.status == JobStatus.RUNNING, JobRow.worker == worker)
        .values(status=JobStatus.QUEUED, worker=None, started_at=None, progress={})
    )
    released = cast(CursorResult[Any], result).rowcount == 1
    if released:
        logger.info("worker %s released job %s back to the queue", worker, job_id)
    return released


def get_training_run(session: Session, project_id: str, run_id: str) -> Job:
    """The training run ``run_id`` of the project; raises TrainingRunNotFound."""
    row = session.get(JobRow, run_id)
    if row is None or row.project_id != project_id or row.task != JobTask.TRAIN:
        raise TrainingRunNotFound(run_id)
    return _to_job(row)


def list_training_runs(session: Session, project_id: str) -> list[Job]:
    """The project's training runs (not its drafts jobs), newest first."""
    rows = session.scalars(
        select(JobRow)
        .where(JobRow.project_id == project_id, JobRow.task == JobTask.TRAIN)
        .order_by(JobRow.created_at.desc())
    )
    return [_to_job(row) for row in rows]


def heartbeat(session: Session, job_id: str) -> None:
    """Record that the worker running ``job_id`` is alive."""
    session.execute(update(JobRow).where(JobRow.id == job_id).values(heartbeat_at=utcnow()))


def recover_stale_jobs(
    session: Session,
    *,
    stale_after_s: float,
    worker_alive: Callable[[str], bool | None],
    max_attempts: int = 3,
) -> list[Job]:
    """Fail jobs whose worker died mid-run, and queue a retry for each (up to ``max_attempts``).

    A run is stale when ``worker_alive(worker)`` says False (a dead process on
    this host) or, when that cannot be known (None), when its heartbeat is older
    than ``stale_after_s``. Nothing it produced was promoted: promotion is the
    last step of a run, in one transaction.

    Returns:
        The retries queued.
    """
    now = utcnow()
    retries: list[Job] = []
    # SKIP LOCKED: of several workers recovering at once, each stale run is handled by one.
    running = session.scalars(
        select(JobRow).where(JobRow.status == JobStatus.RUNNING).with_for_update(skip_locked=True)
    ).all()
    for row in running:
        alive = worker_alive(row.worker or "")
        silent_s = (now - (row.heartbeat_at or row.created_at)).total_seconds()
        if alive or (alive is None and silent_s < stale_after_s):
            continue
        row.status, row.finished_at = JobStatus.FAILED, now
        row.error = f"worker {row.worker} died (no heartbeat for {silent_s:.0f} s)"
        logger.warning("%s job %s: %s", row.task, row.id, row.error)
        # Claims of drafts the dead job was computing: the retry (or a request) takes them
        # now rather than after their lease.
        session.execute(
            delete(DraftClaimRow).where(DraftClaimRow.holder.startswith(f"bulk:{row.id}:"))
        )
        already_queued = session.scalar(
            select(JobRow).where(
                JobRow.project_id == row.project_id,
                JobRow.status == JobStatus.QUEUED,
                JobRow.task == row.task,
            )
        )
        if already_queued is not None and row.task == JobTask.DRAFTS:
            # The queued drafts job takes over what the dead one had left to draft.
            already_queued.params = _merge_params(already_queued.params or {}, row.params or {})
        if row.attempts >= max_attempts or already_queued is not None:
            continue
        retry = JobRow(
            project_id=row.project_id,
            status=JobStatus.QUEUED,
            task=row.task,
            trigger=row.trigger,
            kind=row.kind,
            progress={},
            params=row.params or {},
            attempts=row.attempts,
            retry_of=row.id,
        )
        session.add(retry)
        session.flush()
        retries.append(_to_job(retry))
        logger.info("queued retry %s of %s job %s", retry.id, row.task, row.id)
    return retries
