"""Webhook events: stored first, processed afterwards into corrections, withdrawals and runs."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TypeVar

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from prelabel.blobs import BlobStore
from prelabel.corrections import Correction, record_correction, withdraw_correction
from prelabel.errors import IntegrationError, PrelabelError, ValidationFailed
from prelabel.images import Image
from prelabel.integrations.labelstudio.bindings import (
    Binding,
    TaskImageSource,
    get_binding,
    register_task_image,
    task_image,
    task_image_ref,
)
from prelabel.integrations.labelstudio.brush import annotation_mask
from prelabel.integrations.labelstudio.label_config import (
    LabelMapping,
    map_labels,
    parse_label_config,
)
from prelabel.integrations.labelstudio.payloads import (
    ANNOTATION_ACTIONS,
    LsAnnotation,
    LsUser,
    LsWebhook,
    StoredEvent,
)
from prelabel.jobs import Job, RunKind, RunTrigger, enqueue_training
from prelabel.projects import Project, get_project
from prelabel.tables import (
    IntegrationEventRow,
    LabelStudioAnnotationRow,
    LabelStudioTaskRow,
    utcnow,
)
from prelabel.text import storable

logger = logging.getLogger(__name__)

SOURCE = "labelstudio"
"""``source`` of the corrections and integration events this module records."""

MAX_EVENT_ATTEMPTS = 3
"""An event still queued after this many tries (the process died, or Label Studio was
unreachable each time) is marked failed."""

_T = TypeVar("_T")


def annotator_name(completed_by: int | str | LsUser | None, fallback: str) -> str:
    """Who made an annotation: the user's email, else ``labelstudio:<user id>``, else fallback."""
    if isinstance(completed_by, LsUser):
        if completed_by.email:
            return completed_by.email
        completed_by = completed_by.id
    if isinstance(completed_by, int):
        return f"labelstudio:{completed_by}"
    if isinstance(completed_by, str) and completed_by.strip():
        return completed_by.strip()
    return fallback


def record_event(session: Session, event: StoredEvent) -> str:
    """Store a webhook call to be processed later; returns the event id."""
    row = IntegrationEventRow(
        source=SOURCE,
        action=event.webhook.action,
        payload=event.model_dump(mode="json", exclude_none=True),
        status="queued",
        attempts=0,
    )
    session.add(row)
    session.flush()
    logger.info("stored Label Studio event %s (%s)", row.id, row.action)
    return row.id


@dataclass(frozen=True)
class EventContext:
    """What processing an event needs besides the database."""

    blobs: BlobStore
    images: TaskImageSource
    max_pixels: int


def webhook_project_id(session: Session, webhook: LsWebhook) -> str | None:
    """The prelabel project a webhook concerns (through its binding), if it can be told.

    Lets the service check the sender's rights before storing the event.
    """
    ls_ids = {str(webhook.project.id)} if webhook.project else set()
    ls_ids |= {str(a.project) for a in _listed(webhook.annotation) if a.project is not None}
    if not ls_ids and webhook.annotations:
        ids = [ref.id for ref in webhook.annotations]
        ls_ids = set(
            session.scalars(
                select(LabelStudioAnnotationRow.ls_project).where(
                    LabelStudioAnnotationRow.annotation_id.in_(ids)
                )
            )
        )
    bound = {b.project_id for b in (get_binding(session, i) for i in ls_ids) if b is not None}
    if len(bound) > 1:
        raise ValidationFailed(f"{webhook.action} concerns several prelabel projects")
    return bound.pop() if bound else None


def _binding_for(session: Session, webhook: LsWebhook, annotation: LsAnnotation | None) -> Binding:
    ls_id = webhook.project.id if webhook.project else (annotation.project if annotation else None)
    if ls_id is None:
        raise ValidationFailed(f"{webhook.action} names no Label Studio project")
    binding = get_binding(session, str(ls_id))
    if binding is None:
        raise ValidationFailed(f"Label Studio project {ls_id} is not bound; /setup has not run")
    return binding


def _listed(value: _T | list[_T] | None) -> list[_T]:
    # Label Studio sends one annotation and task, or lists of them for bulk actions.
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _event_mapping(webhook: LsWebhook, binding: Binding, project: Project) -> LabelMapping:
    if webhook.project and webhook.project.label_config:
        return map_labels(parse_label_config(webhook.project.label_config), project.label_schema)
    if binding.mapping is None:
        raise ValidationFailed(
            f"no label config known for Label Studio project {binding.ls_project}; "
            f"/setup has not run"
        )
    return binding.mapping


def _image_for_task(
    session: Session,
    ctx: EventContext,
    binding: Binding,
    mapping: LabelMapping,
    webhook: LsWebhook,
    task_id: int,
    actor: str,
) -> Image:
    image = task_image(session, binding, task_id)
    if image is not None:
        return image
    ref = _task_ref(webhook, mapping, task_id)
    data = ctx.images.fetch(ref, binding)
    return register_task_image(
        session,
        ctx.blobs,
        binding=binding,
        task_id=task_id,
        ref=ref,
        data=data,
        max_pixels=ctx.max_pixels,
        actor=actor,
    )


def _task_ref(webhook: LsWebhook, mapping: LabelMapping, task_id: int) -> str:
    """The image reference of a task the webhook carries.

    Raises:
        ValidationFailed: the webhook carries no such task, or it has no image reference.
    """
    task = next((t for t in _listed(webhook.task) if t.id == task_id), None)
    if task is None:
        raise ValidationFailed(
            f"task {task_id} was never predicted and the webhook carries no task data"
        )
    return task_image_ref(task.data, mapping.data_key, task_id)


def images_to_fetch(session: Session, event: StoredEvent) -> list[tuple[str, Binding]]:
    """The task images (reference, binding) that applying ``event`` would fetch over the
    network: those of its annotations' tasks not stored yet, other than ``data:`` URLs.

    Read without locks, so that they can be fetched before the event's transaction
    takes its locks (on SQLite, the database's write lock): a slow or unreachable Label
    Studio would otherwise hold every writer for the length of the fetch. Whatever
    cannot be told here (an unbound project, a task without data) is left to
    ``apply_event``, which reports it.
    """
    webhook = event.webhook
    if webhook.action not in ANNOTATION_ACTIONS:
        return []
    wanted: dict[str, Binding] = {}
    for annotation in _listed(webhook.annotation):
        if annotation.was_cancelled or annotation.task is None:
            continue
        try:
            binding = _binding_for(session, webhook, annotation)
            mapping = _event_mapping(webhook, binding, get_project(session, binding.project_id))
            if task_image(session, binding, annotation.task) is not None:
                continue
            ref = _task_ref(webhook, mapping, annotation.task)
        except PrelabelError:
            continue
        if not ref.startswith("data:"):
            wanted.setdefault(ref, binding)
    return list(wanted.items())


@dataclass(frozen=True)
class _Prefetched:
    """A ``TaskImageSource`` answering from images fetched beforehand, else from ``source``
    (an event that changed between the look and its lock)."""

    fetched: Mapping[str, bytes]
    source: TaskImageSource

    def fetch(self, ref: str, binding: Binding) -> bytes:
        found = self.fetched.get(ref)
        return found if found is not None else self.source.fetch(ref, binding)


def _apply_annotation(
    session: Session, ctx: EventContext, event: StoredEvent, annotation: LsAnnotation
) -> Correction | None:
    if annotation.was_cancelled or annotation.task is None:
        logger.info("annotation %s skipped (cancelled or without task)", annotation.id)
        return None
    webhook = event.webhook
    binding = _binding_for(session, webhook, annotation)
    project = get_project(session, binding.project_id)
    mapping = _event_mapping(webhook, binding, project)
    image = _image_for_task(
        session, ctx, binding, mapping, webhook, annotation.task, event.actor or SOURCE
    )
    mask = annotation_mask(
        annotation.result,
        mapping=mapping,
        schema=project.label_schema,
        height=image.height,
        width=image.width,
    )
    task_row = session.get(LabelStudioTaskRow, (binding.ls_project, annotation.task))
    correction = record_correction(
        session,
        ctx.blobs,
        project=project,
        image=image,
        mask=mask,
        annotator=annotator_name(annotation.completed_by, event.auth_user or SOURCE),
        lead_time_s=annotation.lead_time,
        draft_id=task_row.draft_id if task_row else None,
        source=SOURCE,
        actor=event.actor or SOURCE,
    )
    session.add(
        LabelStudioAnnotationRow(
            ls_project=binding.ls_project,
            annotation_id=annotation.id,
            task_id=annotation.task,
            correction_id=correction.id,
        )
    )
    return correction


def _withdraw_annotations(session: Session, webhook: LsWebhook, actor: str) -> int:
    ids = [ref.id for ref in webhook.annotations or []]
    query = select(LabelStudioAnnotationRow).where(LabelStudioAnnotationRow.annotation_id.in_(ids))
    if webhook.project is not None:
        query = query.where(LabelStudioAnnotationRow.ls_project == str(webhook.project.id))
    rows = session.scalars(query.order_by(LabelStudioAnnotationRow.created_at.desc())).all()
    for row in rows:
        withdraw_correction(
            session,
            row.correction_id,
            reason=f"Label Studio annotation {row.annotation_id} deleted",
            actor=actor,
        )
    return len(rows)


def _start_training(session: Session, webhook: LsWebhook, actor: str) -> Job:
    binding = _binding_for(session, webhook, None)
    return enqueue_training(
        session,
        binding.project_id,
        trigger=RunTrigger.MANUAL,
        kind=RunKind.INCREMENTAL,
        actor=actor,
    )


def apply_event(session: Session, ctx: EventContext, event: StoredEvent) -> str:
    """Carry out one stored event; returns a one-line summary.

    Raises:
        PrelabelError: whatever stops it (unbound project, bad mask, image fetch).
    """
    webhook = event.webhook
    actor = event.actor or SOURCE
    if webhook.action in ANNOTATION_ACTIONS:
        made = [_apply_annotation(session, ctx, event, a) for a in _listed(webhook.annotation)]
        return f"corrections {[c.id for c in made if c is not None]}"
    if webhook.action == "ANNOTATIONS_DELETED":
        return f"withdrew {_withdraw_annotations(session, webhook, actor)} correction(s)"
    if webhook.action == "START_TRAINING":
        return f"training run {_start_training(session, webhook, actor).id}"
    raise ValidationFailed(f"action {webhook.action!r} is not handled")


def _oldest_queued(session: Session, *, lock: bool) -> IntegrationEventRow | None:
    queued = (IntegrationEventRow.source == SOURCE, IntegrationEventRow.status == "queued")
    oldest = (
        select(IntegrationEventRow)
        .where(*queued)
        .order_by(IntegrationEventRow.created_at, IntegrationEventRow.id)
        .limit(1)
    )
    if not lock:
        return session.scalars(oldest).first()
    # A no-op UPDATE first: SQLite ignores FOR UPDATE, and this takes its write lock before
    # the read. Then FOR UPDATE (waiting, not SKIP LOCKED) on PostgreSQL: replicas take
    # events strictly one after the other, oldest first, so each task's events apply in
    # the order they arrived.
    oldest_id = oldest.with_only_columns(IntegrationEventRow.id).scalar_subquery()
    session.execute(
        update(IntegrationEventRow)
        .where(IntegrationEventRow.id == oldest_id, *queued)
        .values(status=IntegrationEventRow.status)
    )
    return session.scalars(oldest.with_for_update()).first()


@dataclass(frozen=True)
class _Outcome:
    event_id: str
    action: str
    error: PrelabelError | Exception | None


def _prefetch_oldest(factory: sessionmaker[Session], ctx: EventContext) -> EventContext | _Outcome:
    """``ctx`` with the network images of the oldest queued event fetched already
    (``images_to_fetch``), outside any transaction; an outcome with the error when a
    fetch failed (counted like a failure to apply the event)."""
    with factory() as session:
        row = _oldest_queued(session, lock=False)
        if row is None:
            return ctx
        event_id, action = row.id, row.action
        try:
            wanted = images_to_fetch(session, StoredEvent.model_validate(row.payload))
        except Exception:  # applying it meets the same error under the lock and records it
            return ctx
    if not wanted:
        return ctx
    try:
        fetched = {ref: ctx.images.fetch(ref, binding) for ref, binding in wanted}
    except Exception as exc:  # the outcome carries it and the caller records it
        return _Outcome(event_id, action, exc)
    return replace(ctx, images=_Prefetched(fetched, ctx.images))


def _apply_oldest(factory: sessionmaker[Session], ctx: EventContext) -> _Outcome | None:
    """Apply the oldest queued event and mark it done, in one transaction that holds its lock.

    The task images it needs from the network are fetched first, without the lock
    (``_prefetch_oldest``). Returns None when nothing is queued; an outcome with the
    error when applying failed (the transaction is then rolled back: nothing of the
    event was stored).
    """
    while True:
        prefetched = _prefetch_oldest(factory, ctx)
        if isinstance(prefetched, _Outcome):
            return prefetched
        claimed: tuple[str, str] | None = None
        with factory() as session:
            try:
                with session.begin():
                    row = _oldest_queued(session, lock=True)
                    if row is None:
                        if _oldest_queued(session, lock=False) is not None:
                            continue  # it was taken while we waited for its lock: look again
                        return None
                    claimed = (row.id, row.action)
                    summary = apply_event(
                        session, prefetched, StoredEvent.model_validate(row.payload)
                    )
                    row.status, row.error, row.processed_at = "done", None, utcnow()
            except Exception as exc:  # the outcome carries it and the caller records it
                if claimed is None:
                    raise
                return _Outcome(*claimed, exc)
        logger.info("Label Studio event %s (%s) done: %s", *claimed, summary)
        return _Outcome(*claimed, None)


def _record_failure(factory: sessionmaker[Session], outcome: _Outcome) -> bool:
    """Count a failed attempt; returns whether processing should go on with the next event.

    An ``IntegrationError`` (the annotation tool unreachable) leaves the event queued for
    a later try, up to :data:`MAX_EVENT_ATTEMPTS`, and stops processing so that later
    events of the task do not overtake it; any other error marks it failed.
    """
    with factory() as session, session.begin():
        row = session.get(IntegrationEventRow, outcome.event_id, with_for_update=True)
        if row is None or row.status != "queued":
            return True  # another replica finished it meanwhile
        row.attempts += 1
        error = outcome.error
        if isinstance(error, IntegrationError) and row.attempts < MAX_EVENT_ATTEMPTS:
            logger.warning("Label Studio event %s will be retried: %s", row.id, error)
            return False
        if isinstance(error, IntegrationError):
            message = f"gave up after {MAX_EVENT_ATTEMPTS} attempts: {error}"
        elif isinstance(error, PrelabelError):
            message = str(error)
        else:
            message = f"{type(error).__name__}: {error}"
        row.error = storable(message)
        row.status, row.processed_at = "failed", utcnow()
        logger.warning("Label Studio event %s (%s) failed: %s", row.id, outcome.action, row.error)
        return True


def process_pending_events(factory: sessionmaker[Session], ctx: EventContext) -> int:
    """Process every queued Label Studio event, oldest first, exactly once across replicas.

    Called after each webhook answer and at service start, so events left queued by
    a stopped process are retried. Each event is applied in one transaction that
    holds its row lock and marks it done, so a crash midway leaves it queued with
    nothing applied, and replicas calling this concurrently wait for each other
    instead of applying one event twice (on SQLite the database's write lock does
    the same). A failure of the annotation tool (``IntegrationError``) leaves the event
    queued for a later try (up to :data:`MAX_EVENT_ATTEMPTS`) and stops processing;
    any other error marks it failed, with the error, and processing goes on.

    Returns:
        The number of events processed (done or failed) by this call.
    """
    processed = 0
    while (outcome := _apply_oldest(factory, ctx)) is not None:
        if outcome.error is not None:
            if not isinstance(outcome.error, PrelabelError):
                logger.error(
                    "Label Studio event %s failed unexpectedly",
                    outcome.event_id,
                    exc_info=outcome.error,
                )
            if not _record_failure(factory, outcome):
                return processed
        processed += 1
    return processed
