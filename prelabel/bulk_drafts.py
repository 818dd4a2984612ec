"""Bulk pre-labeling: drafts jobs that a person starts, follows and cancels.

A bulk drafts job is a :class:`~prelabel.jobs.Job` of task ``drafts``: the one
mechanism that makes drafts ahead of requests. It is queued after every promotion
and upload (every image without a correction), or by a person (every such image,
or a list) through ``POST /projects/{project}/bulk-drafts`` or ``prelabel
prelabel-all``. A worker (or the CLI, in its own process) runs it
(``models.bulk``): between images it records progress (done/total/failed, rate,
ETA, each failure with its reason), notices a cancellation, and yields to people
waiting for a draft. A job whose worker died is retried by
:func:`~prelabel.jobs.recover_stale_jobs`; the retry skips the images whose draft
by the version already exists, so it resumes where the dead one stopped.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, cast

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session

from prelabel.audit import AuditAction, record_audit
from prelabel.errors import BulkJobNotFound, ConflictError, ImageNotFound
from prelabel.images import Image, list_images
from prelabel.jobs import Job, JobStatus, JobTask, RunTrigger, enqueue_drafts
from prelabel.tables import ImageRow, JobRow, utcnow

logger = logging.getLogger(__name__)

MAX_FAILURES_KEPT = 100
"""Failures listed per job (all are counted); a job failing on every image stays readable."""


class BulkFailure(BaseModel):
    """An image the job could not draft, and why."""

    model_config = ConfigDict(frozen=True)

    image_id: str
    filename: str
    reason: str


class BulkProgress(BaseModel):
    """Where a bulk drafts job stands; recorded between images.

    ``done`` counts images dealt with: drafted by this job (``made``), found drafted
    already (``skipped``: by an earlier attempt, a request, or another job) or
    ``failed``. ``rate_images_per_s`` counts drafts made per second of this attempt;
    ``eta_s`` is the remaining images at that rate. ``yielded_s`` is the time spent
    waiting for people's requests to be served first.
    """

    model_config = ConfigDict(frozen=True)

    model_version: str | None = None
    total: int = 0
    done: int = 0
    made: int = 0
    skipped: int = 0
    failed: int = 0
    failures: list[BulkFailure] = Field(default_factory=list)
    elapsed_s: float = 0.0
    yielded_s: float = 0.0
    rate_images_per_s: float | None = None
    eta_s: float | None = None


class BulkJob(BaseModel):
    """A bulk drafts job as ``GET /projects/{project}/bulk-drafts/{job}`` shows it.

    ``image_ids`` is None for "every image without a correction".
    """

    model_config = ConfigDict(frozen=True)

    id: str
    status: JobStatus
    trigger: RunTrigger
    image_ids: list[str] | None
    progress: BulkProgress
    decision: str | None
    error: str | None
    attempts: int
    retry_of: str | None
    worker: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job: Job) -> BulkJob:
        """The bulk view of a drafts job."""
        return cls(
            id=job.id,
            status=job.status,
            trigger=job.trigger,
            image_ids=job.params.get("image_ids"),
            progress=BulkProgress.model_validate(job.progress or {}),
            decision=job.decision,
            error=job.error,
            attempts=job.attempts,
            retry_of=job.retry_of,
            worker=job.worker,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
        )


def _job_row(session: Session, project_id: str, job_id: str) -> JobRow:
    row = session.get(JobRow, job_id)
    if row is None or row.project_id != project_id or row.task != JobTask.DRAFTS:
        raise BulkJobNotFound(job_id)
    return row


IDS_PER_QUERY = 10_000
"""Listed image ids looked up per query: PostgreSQL takes at most 65,535 parameters in one."""


def _checked_images(session: Session, project_id: str, image_ids: list[str]) -> list[str]:
    """The listed ids, each once in the order first listed, all of them the project's."""
    if not image_ids:
        raise ValueError("image_ids is empty: leave it out to draft every unlabelled image")
    unique = list(dict.fromkeys(image_ids))
    found: set[str] = set()
    for start in range(0, len(unique), IDS_PER_QUERY):
        batch = unique[start : start + IDS_PER_QUERY]
        found.update(
            session.scalars(
                select(ImageRow.id).where(ImageRow.project_id == project_id, ImageRow.id.in_(batch))
            )
        )
    missing = [image_id for image_id in unique if image_id not in found]
    if missing:
        raise ImageNotFound(", ".join(missing[:5]) + (" …" if len(missing) > 5 else ""))
    return unique


def start_bulk_drafts(
    session: Session, project_id: str, *, image_ids: list[str] | None, actor: str
) -> BulkJob:
    """Queue drafting every image without a correction (``image_ids`` None) or the listed
    ones (each once), by the serving version, in the caller's transaction (audited). A queued
    drafts job of the project absorbs the request and is returned.

    Raises:
        ImageNotFound: a listed image is not the project's.
        ValueError: ``image_ids`` is an empty list.
    """
    if image_ids is not None:
        image_ids = _checked_images(session, project_id, image_ids)
    job = enqueue_drafts(session, project_id, image_ids=image_ids, trigger=RunTrigger.MANUAL)
    record_audit(
        session,
        project_id,
        actor=actor,
        action=AuditAction.BULK_DRAFTS_QUEUED,
        details={"job_id": job.id, "images": "unlabelled" if image_ids is None else len(image_ids)},
    )
    return BulkJob.of(job)


def cancel_bulk_drafts(session: Session, project_id: str, job_id: str, *, actor: str) -> BulkJob:
    """Cancel a queued or running bulk drafts job (audited). A running job stops before
    its next image; the drafts it made stay.

    Raises:
        BulkJobNotFound: no such drafts job in the project.
        ConflictError: the job has finished already.
    """
    row = _job_row(session, project_id, job_id)
    if row.status not in (JobStatus.QUEUED, JobStatus.RUNNING):
        raise ConflictError(f"bulk drafts job {job_id} is {row.status}: nothing to cancel")
    row.status, row.finished_at = JobStatus.CANCELLED, utcnow()
    row.decision = f"cancelled by {actor}"
    record_audit(
        session,
        project_id,
        actor=actor,
        action=AuditAction.BULK_DRAFTS_CANCELLED,
        details={"job_id": job_id},
    )
    session.flush()
    logger.info("bulk drafts job %s cancelled by %s", job_id, actor)
    return BulkJob.of(Job.model_validate(row, from_attributes=True))


def get_bulk_job(session: Session, project_id: str, job_id: str) -> BulkJob:
    """The project's bulk drafts job ``job_id``; raises BulkJobNotFound."""
    return BulkJob.of(
        Job.model_validate(_job_row(session, project_id, job_id), from_attributes=True)
    )


def list_bulk_jobs(session: Session, project_id: str, *, limit: int = 100) -> list[BulkJob]:
    """The project's drafts jobs (automatic ones included), newest first."""
    rows = session.scalars(
        select(JobRow)
        .where(JobRow.project_id == project_id, JobRow.task == JobTask.DRAFTS)
        .order_by(JobRow.created_at.desc())
        .limit(limit)
    )
    return [BulkJob.of(Job.model_validate(row, from_attributes=True)) for row in rows]


def images_to_draft(session: Session, job: Job) -> list[Image]:
    """The images the job covers, oldest first: every image without a correction, or the
    listed ones that still exist (a listed image with a correction is drafted too: asked for)."""
    images = list_images(session, job.project_id)
    wanted = job.params.get("image_ids")
    if wanted is None:
        return [image for image in images if not image.has_correction]
    listed = set(wanted)
    return [image for image in images if image.id in listed]


def forget_image_in_bulk_jobs(session: Session, project_id: str, image_id: str) -> None:
    """Take ``image_id`` out of the project's drafts jobs, in the caller's transaction
    (erasure): out of their image lists and their failures (id and file name). The
    failures stay counted."""
    rows = session.scalars(
        select(JobRow)
        .where(JobRow.project_id == project_id, JobRow.task == JobTask.DRAFTS)
        # Locked: a worker records progress only after locking its job's row and then
        # leaves out images no longer stored (``_naming_stored_images``), so its failures
        # list cannot bring the image back after this transaction commits.
        .with_for_update()
    )
    for row in rows:
        listed = row.params.get("image_ids")
        if listed is not None and image_id in listed:
            row.params = {**row.params, "image_ids": [i for i in listed if i != image_id]}
        progress = BulkProgress.model_validate(row.progress or {})
        failures = [f for f in progress.failures if f.image_id != image_id]
        if len(failures) != len(progress.failures):
            row.progress = progress.model_copy(update={"failures": failures}).model_dump(
                mode="json"
            )


def record_bulk_progress(session: Session, job_id: str, progress: BulkProgress) -> bool:
    """Record the job's progress and heartbeat, if it still runs.

    Returns:
        False when the job stopped running (cancelled, or failed over by recovery): the
        worker stops before its next image.
    """
    progress = _naming_stored_images(session, job_id, progress)
    result = session.execute(
        update(JobRow)
        .where(JobRow.id == job_id, JobRow.status == JobStatus.RUNNING)
        .values(progress=progress.model_dump(mode="json"), heartbeat_at=utcnow())
    )
    return cast(CursorResult[Any], result).rowcount == 1


def _naming_stored_images(session: Session, job_id: str, progress: BulkProgress) -> BulkProgress:
    """``progress`` without the failures of images erased while the job ran (their count
    stays), read after locking the job's row: an erasure that committed first is seen,
    and one that comes later waits for this transaction and cleans up after it
    (``forget_image_in_bulk_jobs``)."""
    session.execute(select(JobRow.id).where(JobRow.id == job_id).with_for_update())
    if not progress.failures:
        return progress
    named = {failure.image_id for failure in progress.failures}
    stored = set(session.scalars(select(ImageRow.id).where(ImageRow.id.in_(named))))
    kept = [failure for failure in progress.failures if failure.image_id in stored]
    if len(kept) == len(progress.failures):
        return progress
    return progress.model_copy(update={"failures": kept})


def finish_bulk_job(
    session: Session,
    job_id: str,
    progress: BulkProgress,
    *,
    status: JobStatus,
    decision: str | None = None,
    error: str | None = None,
) -> bool:
    """Record the end of a running job with its last progress; a cancelled job stays
    cancelled (with the progress it reached). Returns whether the job was still running."""
    progress = _naming_stored_images(session, job_id, progress)
    values: dict[str, Any] = {"progress": progress.model_dump(mode="json")}
    session.execute(
        update(JobRow)
        .where(JobRow.id == job_id, JobRow.status == JobStatus.CANCELLED)
        .values(**values)
    )
    result = session.execute(
        update(JobRow)
        .where(JobRow.id == job_id, JobRow.status == JobStatus.RUNNING)
        .values(
            **values,
            status=status,
            decision=decision,
            error=error,
            model_version=progress.model_version,
            finished_at=utcnow(),
        )
    )
    finished = cast(CursorResult[Any], result).rowcount == 1
    if finished:
        logger.info("bulk drafts job %s %s: %s", job_id, status, decision or error)
    return finished
