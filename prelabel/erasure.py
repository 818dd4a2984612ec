"""Erasure (GDPR right to erasure): an image and everything made from it, or a whole project.

What goes: the image's bytes, its drafts and confidence maps, its corrections (with reviews) with
their history and withdrawals, the Label Studio task map and annotation links,
the stored webhook events that carry its data (task data, annotation masks), and its
place in bulk drafts jobs (their image lists and failures). Model
lineage that names the image or its corrections is scrubbed of those ids, and the
versions that learnt from its corrections are marked ``trained_on_erased`` so an ML
engineer can retrain without it. Model weights themselves are not rewritten: the
answer names the versions to retrain. The audit trail keeps ids only.

Blobs are deleted inside the database transaction (idempotently): if the commit then
fails, running the erasure again finishes it, and no blob outlives its rows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from prelabel.audit import AuditAction, record_audit
from prelabel.blobs import BlobStore
from prelabel.bulk_drafts import forget_image_in_bulk_jobs
from prelabel.images import get_image
from prelabel.integrations.labelstudio.payloads import StoredEvent
from prelabel.projects import Project
from prelabel.tables import (
    CorrectionRow,
    CorrectionWithdrawalRow,
    DraftRow,
    ImageRow,
    IntegrationEventRow,
    JobRow,
    LabelStudioAnnotationRow,
    LabelStudioBindingRow,
    LabelStudioTaskRow,
    MembershipRow,
    ModelVersionRow,
    ProjectRow,
    RefinementRow,
    ReviewRow,
)

logger = logging.getLogger(__name__)

_LABELSTUDIO = "labelstudio"


@dataclass(frozen=True)
class ImageErasure:
    """What erasing an image removed, and the model versions to retrain without it."""

    image_id: str
    corrections: int
    drafts: int
    integration_events: int
    trained_on_erased: list[str]


@dataclass(frozen=True)
class ProjectErasure:
    """What erasing a project removed."""

    project_id: str
    images: int
    model_versions: int
    blobs: int


def scrub_ids(value: Any, ids: frozenset[str]) -> Any:
    """``value`` (JSON) without the dict keys and list items that are one of ``ids``."""
    if isinstance(value, dict):
        return {k: scrub_ids(v, ids) for k, v in value.items() if k not in ids}
    if isinstance(value, list):
        return [scrub_ids(v, ids) for v in value if not (isinstance(v, str) and v in ids)]
    return value


def _event_mentions(payload: dict[str, Any], tasks: set[int], annotations: set[int]) -> bool:
    webhook = StoredEvent.model_validate(payload).webhook
    listed_tasks = webhook.task if isinstance(webhook.task, list) else [webhook.task]
    listed = webhook.annotation if isinstance(webhook.annotation, list) else [webhook.annotation]
    return (
        any(t is not None and t.id in tasks for t in listed_tasks)
        or any(a is not None and (a.task in tasks or a.id in annotations) for a in listed)
        or any(ref.id in annotations for ref in webhook.annotations or [])
    )


def _erase_events(
    session: Session, ls_projects: set[str], tasks: set[int], annotations: set[int]
) -> int:
    erased = 0
    rows = session.scalars(
        select(IntegrationEventRow).where(IntegrationEventRow.source == _LABELSTUDIO)
    ).all()
    for row in rows:
        project = (row.payload.get("webhook") or {}).get("project") or {}
        if ls_projects and project.get("id") is not None and str(project["id"]) not in ls_projects:
            continue
        if _event_mentions(row.payload, tasks, annotations):
            session.delete(row)
            erased += 1
    return erased


def _scrub_lineage(
    session: Session, project_id: str, ids: frozenset[str], correction_ids: frozenset[str]
) -> list[str]:
    trained: list[str] = []
    versions = session.scalars(
        select(ModelVersionRow).where(ModelVersionRow.project_id == project_id)
    ).all()
    for version in versions:
        if correction_ids & set(version.trained_on):
            version.trained_on_erased = True
            trained.append(version.version)
        version.trained_on = scrub_ids(version.trained_on, ids)
        version.held_out = scrub_ids(version.held_out, ids)
        version.review_states = scrub_ids(version.review_states, ids)
        version.metrics = scrub_ids(version.metrics, ids)
        version.config = scrub_ids(version.config, ids)
    for job in session.scalars(select(JobRow).where(JobRow.project_id == project_id)):
        job.progress = scrub_ids(job.progress, ids)
    return trained


def _delete_blobs(blobs: BlobStore, keys: Iterable[str]) -> None:
    for key in keys:
        blobs.delete(key)


def erase_image(
    session: Session, blobs: BlobStore, project: Project, image_id: str, *, actor: str
) -> ImageErasure:
    """Erase one image of ``project`` and everything made from it, in the caller's transaction.

    Raises:
        ImageNotFound: The project has no such image.
    """
    image = get_image(session, project.id, image_id)
    corrections = session.scalars(
        select(CorrectionRow).where(CorrectionRow.image_id == image.id)
    ).all()
    drafts = session.scalars(select(DraftRow).where(DraftRow.image_id == image.id)).all()
    correction_ids = frozenset(c.id for c in corrections)
    ids = correction_ids | {image.id} | {d.id for d in drafts}
    task_rows = session.scalars(
        select(LabelStudioTaskRow).where(LabelStudioTaskRow.image_id == image.id)
    ).all()
    links = session.scalars(
        select(LabelStudioAnnotationRow).where(
            LabelStudioAnnotationRow.correction_id.in_(correction_ids)
        )
    ).all()
    events = _erase_events(
        session,
        {t.ls_project for t in task_rows} | {a.ls_project for a in links},
        {t.task_id for t in task_rows} | {a.task_id for a in links},
        {a.annotation_id for a in links},
    )
    trained = _scrub_lineage(session, project.id, ids, correction_ids)
    forget_image_in_bulk_jobs(session, project.id, image.id)
    _delete_blobs(
        blobs,
        [image.blob_key]
        + [c.mask_key for c in corrections]
        + [key for d in drafts for key in (d.mask_key, d.confidence_key)],
    )
    for row in (*links, *task_rows):
        session.delete(row)
    session.execute(
        delete(CorrectionWithdrawalRow).where(
            CorrectionWithdrawalRow.correction_id.in_(correction_ids)
        )
    )
    session.execute(delete(RefinementRow).where(RefinementRow.image_id == image.id))
    session.execute(delete(ReviewRow).where(ReviewRow.correction_id.in_(correction_ids)))
    session.execute(delete(CorrectionRow).where(CorrectionRow.image_id == image.id))
    session.execute(delete(DraftRow).where(DraftRow.image_id == image.id))
    session.execute(delete(ImageRow).where(ImageRow.id == image.id))
    details = {
        "corrections": len(corrections),
        "drafts": len(drafts),
        "integration_events": events,
        "trained_on_erased": trained,
    }
    record_audit(
        session,
        project.id,
        actor=actor,
        action=AuditAction.IMAGE_ERASED,
        image_id=image.id,
        details=details,
    )
    logger.info("erased image %s of project %s: %s", image.id, project.id, details)
    return ImageErasure(image.id, len(corrections), len(drafts), events, trained)


def erase_project(
    session: Session, blobs: BlobStore, project: Project, *, actor: str
) -> ProjectErasure:
    """Erase a project with all its data and model artifacts, in the caller's transaction."""
    pid = project.id
    bindings = session.scalars(
        select(LabelStudioBindingRow.ls_project).where(LabelStudioBindingRow.project_id == pid)
    ).all()
    events = session.scalars(
        select(IntegrationEventRow).where(IntegrationEventRow.source == _LABELSTUDIO)
    ).all()
    for event in events:
        ls_id = ((event.payload.get("webhook") or {}).get("project") or {}).get("id")
        if ls_id is not None and str(ls_id) in bindings:
            session.delete(event)
    images = session.scalars(select(ImageRow.id).where(ImageRow.project_id == pid)).all()
    versions = session.scalars(
        select(ModelVersionRow.id).where(ModelVersionRow.project_id == pid)
    ).all()
    blob_count = blobs.delete_prefix(f"projects/{pid}/")
    correction_ids = select(CorrectionRow.id).where(CorrectionRow.project_id == pid)
    for statement in (
        delete(LabelStudioAnnotationRow).where(LabelStudioAnnotationRow.ls_project.in_(bindings)),
        delete(LabelStudioTaskRow).where(LabelStudioTaskRow.ls_project.in_(bindings)),
        delete(LabelStudioBindingRow).where(LabelStudioBindingRow.project_id == pid),
        delete(CorrectionWithdrawalRow).where(
            CorrectionWithdrawalRow.correction_id.in_(correction_ids)
        ),
        delete(RefinementRow).where(RefinementRow.project_id == pid),
        delete(ReviewRow).where(ReviewRow.project_id == pid),
        delete(CorrectionRow).where(CorrectionRow.project_id == pid),
        delete(DraftRow).where(DraftRow.project_id == pid),
        delete(ImageRow).where(ImageRow.project_id == pid),
        delete(ModelVersionRow).where(ModelVersionRow.project_id == pid),
        delete(JobRow).where(JobRow.project_id == pid),
        delete(MembershipRow).where(MembershipRow.project_id == pid),
        delete(ProjectRow).where(ProjectRow.id == pid),
    ):
        session.execute(statement)
    details = {"images": len(images), "model_versions": len(versions), "blobs": blob_count}
    record_audit(session, pid, actor=actor, action=AuditAction.PROJECT_ERASED, details=details)
    logger.info("erased project %s: %s", pid, details)
    return ProjectErasure(pid, len(images), len(versions), blob_count)
