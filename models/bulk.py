"""Running a bulk drafts job: draft its images one by one with the serving version.

The worker runs queued drafts jobs with :func:`run_bulk_job` (after a promotion,
an upload, or a person's ``POST …/bulk-drafts``); ``prelabel prelabel-all`` runs
one in its own process the same way. Between images the job

- waits while people's requests are computing drafts (interactive claims), up to
  ``yield_max_s`` per image, so that an annotator never queues behind it;
- records its progress and heartbeat, and stops when it was cancelled;
- skips an image whose draft by the version exists (made by an earlier attempt
  that died, by a request, by another job) or is being made by someone else
  (claimed): a retry resumes where the dead attempt stopped, and no draft is
  computed twice at once;
- records an image it cannot draft (a corrupt file, …) as a failure with its
  reason, and goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from models.predictor import OnnxPredictor
from models.registry import ModelRecord, serving_version
from models.serving import predict_draft, save_draft
from prelabel.bulk_drafts import (
    MAX_FAILURES_KEPT,
    BulkFailure,
    BulkProgress,
    finish_bulk_job,
    images_to_draft,
    record_bulk_progress,
)
from prelabel.database import write_transaction
from prelabel.draft_claims import interactive_claims, release_claim, try_claim
from prelabel.drafts import drafted_image_ids, latest_draft
from prelabel.errors import PrelabelError
from prelabel.images import Image
from prelabel.jobs import Job, JobStatus, release_job
from prelabel.projects import Project, get_project
from prelabel.tables import JobRow
from prelabel.workspace import Workspace

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BulkOptions:
    """How a bulk job shares the machine and the drafts.

    Attributes:
        lease_s: How long a claim on a draft being computed holds if its holder dies.
        yield_max_s: The longest a job waits, before each image, for people's requests
            to be served first (then it drafts one image anyway: it never starves).
        poll_s: How often it looks again while yielding.
        lanes: Images drafted at once, each by its own thread (give the predictor one
            onnxruntime thread per lane: decoding, encoding and storing one image then
            overlap the network's run on another).
    """

    lease_s: float = 60.0
    yield_max_s: float = 10.0
    poll_s: float = 0.02
    lanes: int = 1

    def __post_init__(self) -> None:
        if self.lanes < 1:
            raise ValueError(f"lanes must be >= 1, got {self.lanes}")


@dataclass
class _Tally:
    """The progress of one attempt, as it goes."""

    model_version: str | None
    total: int
    started: float = field(default_factory=time.perf_counter)
    made: int = 0
    skipped: int = 0
    failures: list[BulkFailure] = field(default_factory=list)
    failed: int = 0
    yielded_s: float = 0.0

    def fail(self, image: Image, reason: str) -> None:
        self.failed += 1
        if len(self.failures) < MAX_FAILURES_KEPT:
            self.failures.append(
                BulkFailure(image_id=image.id, filename=image.filename, reason=reason)
            )

    def progress(self) -> BulkProgress:
        elapsed_s = time.perf_counter() - self.started
        done = self.made + self.skipped + self.failed
        rate = self.made / elapsed_s if self.made and elapsed_s > 0 else None
        return BulkProgress(
            model_version=self.model_version,
            total=self.total,
            done=done,
            made=self.made,
            skipped=self.skipped,
            failed=self.failed,
            failures=list(self.failures),
            elapsed_s=round(elapsed_s, 3),
            yielded_s=round(self.yielded_s, 3),
            rate_images_per_s=round(rate, 3) if rate else None,
            eta_s=round((self.total - done) / rate, 1) if rate else None,
        )

    def decision(self) -> str:
        return f"{self.made} drafts made, {self.skipped} already there, {self.failed} failed"


@dataclass
class _Lanes:
    """What the lanes of one attempt share: the images left, the tally, why they halted."""

    images: Iterator[Image]
    tally: _Tally
    lock: threading.Lock = field(default_factory=threading.Lock)
    halted: JobStatus | None = None
    """QUEUED (``stop`` was set) or CANCELLED (the job no longer runs)."""
    error: BaseException | None = None

    def next_image(self) -> Image | None:
        with self.lock:
            return None if self.halted or self.error else next(self.images, None)

    def halt(self, status: JobStatus) -> None:
        with self.lock:
            self.halted = self.halted or status


def yield_to_people(workspace: Workspace, options: BulkOptions) -> float:
    """Wait while people's requests are computing drafts (at most ``yield_max_s``).

    Returns:
        The seconds waited.
    """
    started = time.perf_counter()
    while time.perf_counter() - started < options.yield_max_s:
        with workspace.sessions() as session:
            if interactive_claims(session) == 0:
                break
        time.sleep(options.poll_s)
    return time.perf_counter() - started


def _claim_next(
    workspace: Workspace,
    job: Job,
    image: Image,
    version: str,
    progress: BulkProgress,
    *,
    holder: str,
    lease_s: float,
) -> bool | None:
    """Record progress, then claim the image's draft. None: the job no longer runs."""

    def claim(session: Session) -> bool | None:
        if not record_bulk_progress(session, job.id, progress):
            return None
        # Claim first, then look (a draft stored between a look and a claim is seen).
        won = try_claim(
            session,
            project_id=job.project_id,
            image_id=image.id,
            model_version=version,
            holder=holder,
            interactive=False,
            lease_s=lease_s,
        )
        if won and latest_draft(session, image, model_version=version) is not None:
            release_claim(session, image_id=image.id, model_version=version, holder=holder)
            return False
        return won

    return write_transaction(workspace.sessions, claim)


def _draft_one(
    workspace: Workspace,
    project: Project,
    image: Image,
    serving: ModelRecord,
    predictor: OnnxPredictor,
    holder: str,
) -> str | None:
    """Draft one claimed image; the reason it failed, or None."""
    try:
        predicted = predict_draft(workspace, project, image, serving, predictor)
        save_draft(workspace, project, image, serving, predicted, claim_holder=holder)
        return None
    except PrelabelError as exc:
        reason = str(exc)
    except Exception as exc:
        # One image the runtime chokes on must not end a job of thousands: record it.
        logger.exception("bulk drafts: image %s crashed the predictor", image.id)
        reason = f"{type(exc).__name__}: {exc}"
    write_transaction(
        workspace.sessions,
        lambda session: release_claim(
            session, image_id=image.id, model_version=serving.version, holder=holder
        ),
    )
    return reason


def _finish(
    workspace: Workspace,
    job: Job,
    tally: _Tally,
    status: JobStatus,
    *,
    decision: str | None = None,
    error: str | None = None,
) -> JobStatus:
    """Record the job's outcome; the status it ends with (CANCELLED if cancelled meanwhile)."""
    progress = tally.progress()

    def finish(session: Session) -> JobStatus:
        if finish_bulk_job(
            session, job.id, progress, status=status, decision=decision, error=error
        ):
            return status
        row = session.get(JobRow, job.id)
        return JobStatus(row.status) if row is not None else JobStatus.CANCELLED

    return write_transaction(workspace.sessions, finish)


def _run_lane(
    workspace: Workspace,
    job: Job,
    project: Project,
    serving: ModelRecord,
    predictor: OnnxPredictor,
    shared: _Lanes,
    options: BulkOptions,
    stop: threading.Event | None,
    on_progress: Callable[[BulkProgress], None],
) -> None:
    """Take the next image, yield to people, claim it, draft it; until none is left."""
    holder = f"bulk:{job.id}:{job.worker}"
    while (image := shared.next_image()) is not None:
        if stop is not None and stop.is_set():
            shared.halt(JobStatus.QUEUED)
            return
        waited_s = yield_to_people(workspace, options)
        with shared.lock:
            shared.tally.yielded_s += waited_s
            progress = shared.tally.progress()
        claimed = _claim_next(
            workspace, job, image, serving.version, progress, holder=holder, lease_s=options.lease_s
        )
        if claimed is None:
            shared.halt(JobStatus.CANCELLED)
            return
        reason = (
            _draft_one(workspace, project, image, serving, predictor, holder) if claimed else None
        )
        with shared.lock:
            if not claimed:
                shared.tally.skipped += 1
            elif reason is None:
                shared.tally.made += 1
            else:
                logger.warning("bulk drafts job %s: image %s: %s", job.id, image.id, reason)
                shared.tally.fail(image, reason)
            on_progress(shared.tally.progress())


def run_bulk_job(
    workspace: Workspace,
    job: Job,
    load_predictor: Callable[[ModelRecord], OnnxPredictor],
    *,
    options: BulkOptions | None = None,
    stop: threading.Event | None = None,
    on_progress: Callable[[BulkProgress], None] = lambda _: None,
) -> JobStatus:
    """Draft the images of a claimed drafts job with the serving version; record the outcome.

    Returns:
        SUCCEEDED (failed images listed in its progress), FAILED (no image could be
        drafted, or the model could not be loaded), CANCELLED (cancelled while it ran),
        or QUEUED: ``stop`` was set and the job went back to the queue (a later attempt
        skips what this one drafted).
    """
    options = options or BulkOptions()
    with workspace.sessions() as session:
        project = get_project(session, job.project_id)
        serving = serving_version(session, project.id)
        images = images_to_draft(session, job)
        drafted = (
            drafted_image_ids(session, project.id, model_version=serving.version)
            if serving
            else set()
        )
    # Drafts already there are counted at once, not claimed one transaction each; one
    # stored from now on is still found by the claim (``_claim_next``).
    left = [image for image in images if image.id not in drafted]
    tally = _Tally(
        model_version=serving.version if serving else None,
        total=len(images),
        skipped=len(images) - len(left),
    )
    if serving is None:
        return _finish(workspace, job, tally, JobStatus.SUCCEEDED, decision="no model serves yet")
    if not left:
        return _finish(workspace, job, tally, JobStatus.SUCCEEDED, decision=tally.decision())
    try:
        predictor = load_predictor(serving)
    except PrelabelError as exc:
        return _finish(workspace, job, tally, JobStatus.FAILED, error=str(exc))
    logger.info(
        "bulk drafts job %s: %d images with %s (%d drafted already), %d lanes",
        job.id,
        len(images),
        serving.version,
        tally.skipped,
        options.lanes,
    )
    shared = _Lanes(iter(left), tally)

    def lane() -> None:
        try:
            _run_lane(
                workspace, job, project, serving, predictor, shared, options, stop, on_progress
            )
        except BaseException as exc:  # re-raised by the job's own thread below
            with shared.lock:
                shared.error = shared.error or exc

    others = [
        threading.Thread(target=lane, name=f"bulk-{job.id[:8]}-{number}", daemon=True)
        for number in range(1, options.lanes)
    ]
    for thread in others:
        thread.start()
    lane()
    for thread in others:
        thread.join()
    if shared.error is not None:
        raise shared.error
    if shared.halted is JobStatus.QUEUED:
        write_transaction(
            workspace.sessions, lambda session: release_job(session, job.id, job.worker or "")
        )
        return JobStatus.QUEUED
    if shared.halted is JobStatus.CANCELLED:
        logger.info("bulk drafts job %s stopped running: %s", job.id, tally.decision())
        return _finish(workspace, job, tally, JobStatus.CANCELLED)
    on_progress(tally.progress())
    status = (
        JobStatus.FAILED if tally.failed and tally.failed == len(images) else JobStatus.SUCCEEDED
    )
    return _finish(workspace, job, tally, status, decision=tally.decision())
