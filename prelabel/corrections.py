"""Corrections: the human-edited masks, with provenance and draft-vs-correction metrics.

:func:`record_correction` is the one way a correction enters a project, whichever
path it comes by (``PUT …/correction``, a Label Studio annotation, an imported
dataset, a reviewer's edit): it validates and stores the mask, compares it with
its draft and opens its review when the project requires one, in the caller's
transaction; once that has committed, the project's training policy is applied
(:func:`prelabel.triggers.apply_policy_after_commit`).
"""

from __future__ import annotations

import logging
import math
import random
from datetime import datetime

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from prelabel.audit import AuditAction, record_audit
from prelabel.blobs import BlobStore
from prelabel.codecs import decode_index_png, encode_schema_mask
from prelabel.drafts import Draft, get_draft, latest_draft, load_draft_mask
from prelabel.errors import CorrectionNotFound, ValidationFailed
from prelabel.images import Image
from prelabel.metrics import DraftComparison, compare_masks
from prelabel.projects import Project
from prelabel.refinements import clicks_since
from prelabel.reviewing import ReviewReason, ReviewStatus, draw_for_review, trainable_clause
from prelabel.tables import CorrectionRow, CorrectionWithdrawalRow, new_id, utcnow
from prelabel.text import holds_control_characters
from prelabel.triggers import apply_policy_after_commit

logger = logging.getLogger(__name__)


class Correction(BaseModel):
    """A stored correction. ``metrics`` compare it with the draft it started from."""

    model_config = ConfigDict(frozen=True)

    id: str
    project_id: str
    image_id: str
    draft_id: str | None
    model_version: str | None
    annotator: str
    source: str
    lead_time_s: float | None
    mask_key: str
    is_current: bool
    supersedes: str | None
    metrics: DraftComparison | None
    clicks: int = 0
    review_status: ReviewStatus = ReviewStatus.NOT_REQUIRED
    review_reason: ReviewReason | None = None
    """Why it got its first review status: drawn for review or not, resubmission, …"""
    resubmits: str | None = None
    """The rejected correction this one resubmits."""
    reviewed_at: datetime | None = None
    created_at: datetime


_DRAW_RNG = random.SystemRandom()
"""Review draws must not be predictable by annotators."""


def to_correction(row: CorrectionRow) -> Correction:
    """The correction a stored row holds."""
    return Correction(
        id=row.id,
        project_id=row.project_id,
        image_id=row.image_id,
        draft_id=row.draft_id,
        model_version=row.model_version,
        annotator=row.annotator,
        source=row.source,
        lead_time_s=row.lead_time_s,
        mask_key=row.mask_key,
        is_current=row.is_current,
        supersedes=row.supersedes,
        metrics=DraftComparison.from_dict(row.metrics) if row.metrics else None,
        clicks=row.clicks,
        review_status=ReviewStatus(row.review_status),
        review_reason=ReviewReason(row.review_reason) if row.review_reason else None,
        resubmits=row.resubmits,
        reviewed_at=row.reviewed_at,
        created_at=row.created_at,
    )


def _starting_draft(
    session: Session, project: Project, image: Image, draft_id: str | None
) -> Draft | None:
    if draft_id is None:
        return latest_draft(session, image, model_version=None, any_version=True)
    draft = get_draft(session, project.id, draft_id)
    if draft.image_id != image.id:
        raise ValidationFailed(
            f"draft {draft_id!r} belongs to image {draft.image_id!r}, not to image {image.id!r}"
        )
    return draft


MAX_ANNOTATOR_LENGTH = 200
"""The longest annotator name a correction keeps (its column's length, a user name's limit)."""


def _check_annotator(annotator: str) -> None:
    name = annotator.strip()
    if not name:
        raise ValidationFailed("annotator must not be empty")
    if len(name) > MAX_ANNOTATOR_LENGTH:
        raise ValidationFailed(
            f"annotator is {len(name)} characters long, over {MAX_ANNOTATOR_LENGTH}"
        )
    if holds_control_characters(name):
        raise ValidationFailed(f"annotator {name[:40]!r} holds control characters")


def check_seconds(name: str, seconds: float | None) -> None:
    """A time a person spent (lead time, review time): absent, or finite and >= 0.

    Raises:
        ValidationFailed: Naming the field and the value.
    """
    if seconds is not None and not (math.isfinite(seconds) and seconds >= 0):
        raise ValidationFailed(f"{name} must be a finite number >= 0, got {seconds}")


def submit_correction(
    session: Session,
    blobs: BlobStore,
    *,
    project: Project,
    image: Image,
    mask: npt.NDArray[np.integer],
    annotator: str,
    lead_time_s: float | None = None,
    draft_id: str | None = None,
    source: str = "api",
) -> Correction:
    """Validate and store a correction of ``image``; it supersedes the previous one.

    The storing step of :func:`record_correction`, without the training policy;
    paths that record corrections call that (benchmarks and tests that fill a
    project without queueing runs call this).

    Args:
        mask: (H, W) index mask of the image's size; values are class ids of the
            project's schema or its ignore index.
        draft_id: the draft the annotator started from; by default the newest
            draft served for the image. Without any draft, no metrics are computed.

    The correction's ``clicks`` are the distinct clicks of the refinements of the
    image recorded since its previous correction (0 without refinements).

    Raises:
        ValidationFailed: wrong mask size; an annotator that is empty, over
            :data:`MAX_ANNOTATOR_LENGTH` characters or holds control characters; a lead
            time that is negative or not finite.
        SchemaError: class ids outside the schema.
        DraftNotFound: unknown ``draft_id``.
    """
    schema = project.label_schema
    if mask.shape != (image.height, image.width):
        raise ValidationFailed(
            f"mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but image "
            f"{image.id} is {image.width}x{image.height}"
        )
    _check_annotator(annotator)
    check_seconds("lead_time_s", lead_time_s)
    schema.validate_mask(mask)
    draft = _starting_draft(session, project, image, draft_id)
    comparison = None
    if draft is not None:
        comparison = compare_masks(
            load_draft_mask(blobs, draft),
            mask,
            num_classes=schema.num_classes,
            ignore_index=schema.ignore_index,
            acceptance_threshold=project.acceptance_threshold,
            background_id=schema.background,
        )
    previous = session.scalar(
        select(CorrectionRow.id).where(
            CorrectionRow.image_id == image.id, CorrectionRow.is_current.is_(True)
        )
    )
    # The clicks this correction took: those since the image's previous correction.
    last_at = session.scalar(
        select(func.max(CorrectionRow.created_at)).where(CorrectionRow.image_id == image.id)
    )
    clicks = clicks_since(session, image, last_at)
    # The mask is encoded and stored before the first write statement: on SQLite that
    # statement takes the database's one write lock, held until commit, so the lock is not
    # held while the PNG is encoded and fsynced (a failed transaction removes the blob).
    correction_id = new_id()
    mask_key = f"projects/{project.id}/corrections/{correction_id}.png"
    blobs.put(mask_key, encode_schema_mask(mask, schema))
    session.execute(
        update(CorrectionRow).where(CorrectionRow.image_id == image.id).values(is_current=False)
    )
    row = CorrectionRow(
        id=correction_id,
        project_id=project.id,
        image_id=image.id,
        draft_id=draft.id if draft else None,
        model_version=draft.model_version if draft else None,
        annotator=annotator.strip(),
        source=source,
        lead_time_s=lead_time_s,
        mask_key=mask_key,
        is_current=True,
        supersedes=previous,
        metrics=comparison.to_dict() if comparison else None,
        accepted=comparison.accepted if comparison else None,
        clicks=clicks,
    )
    session.add(row)
    session.flush()
    logger.info(
        "stored correction %s of image %s by %s (draft %s, accepted=%s)",
        row.id,
        image.id,
        row.annotator,
        row.draft_id,
        row.accepted,
    )
    return to_correction(row)


def record_correction(
    session: Session,
    blobs: BlobStore,
    *,
    project: Project,
    image: Image,
    mask: npt.NDArray[np.integer],
    annotator: str,
    source: str,
    actor: str,
    lead_time_s: float | None = None,
    draft_id: str | None = None,
    reviewer_edit: bool = False,
) -> Correction:
    """Record a correction of ``image``: the rule every path follows, in the caller's
    transaction.

    Validates and stores the mask (it supersedes the image's previous correction,
    whose history is kept), compares it with the draft it started from and opens its
    review (:func:`open_review`); once the transaction has committed, the project's
    training policy is applied, which may queue a training run. The
    stored correction is its own audit record: who (``annotator``), through what
    (``source``), when, from which draft and model version, and what it superseded.

    Args:
        mask: (H, W) index mask of the image's size; values are class ids of the
            project's schema or its ignore index.
        source: the path it came by: ``api``, ``labelstudio``, ``import``.
        actor: the authenticated caller that sent it (audited); ``annotator`` is
            whom the mask is attributed to.
        draft_id: the draft the annotator started from; by default the newest
            draft served for the image.
        reviewer_edit: the mask is a reviewer's edit of the current correction
            (``annotator`` is the reviewer): it carries that reviewer's approval.

    Raises:
        ValidationFailed: wrong mask size, a bad annotator or lead time (see
            :func:`submit_correction`).
        SchemaError: class ids outside the schema.
        DraftNotFound: unknown ``draft_id``.
    """
    previous = session.scalar(
        select(CorrectionRow).where(
            CorrectionRow.image_id == image.id, CorrectionRow.is_current.is_(True)
        )
    )
    previous_status = ReviewStatus(previous.review_status) if previous else None
    correction = submit_correction(
        session,
        blobs,
        project=project,
        image=image,
        mask=mask,
        annotator=annotator,
        lead_time_s=lead_time_s,
        draft_id=draft_id,
        source=source,
    )
    record_audit(
        session,
        project.id,
        actor=actor,
        action=AuditAction.CORRECTION_WRITTEN,
        image_id=image.id,
        details={"correction_id": correction.id, "draft_id": correction.draft_id},
    )
    correction = open_review(
        session,
        project,
        correction.id,
        previous_id=previous.id if previous else None,
        previous_status=previous_status,
        reviewer_edit=reviewer_edit,
    )
    apply_policy_after_commit(session, project)
    return correction


def _draw_counts(session: Session, project_id: str) -> tuple[int, int]:
    """(corrections that went through the draw, how many were drawn) in the project."""
    reasons = session.scalars(
        select(CorrectionRow.review_reason).where(
            CorrectionRow.project_id == project_id,
            CorrectionRow.review_reason.in_([ReviewReason.DRAWN, ReviewReason.NOT_DRAWN]),
        )
    ).all()
    return len(reasons), sum(reason == ReviewReason.DRAWN for reason in reasons)


def _first_review_state(
    session: Session,
    project: Project,
    previous_status: ReviewStatus | None,
    reviewer_edit: bool,
) -> tuple[ReviewStatus, ReviewReason]:
    settings = project.review
    if reviewer_edit:
        done = settings.min_reviewers <= 1
        return (ReviewStatus.APPROVED if done else ReviewStatus.PENDING), ReviewReason.REVIEWER_EDIT
    if previous_status is ReviewStatus.REJECTED:
        return ReviewStatus.PENDING, ReviewReason.RESUBMISSION
    if previous_status is ReviewStatus.PENDING:
        return ReviewStatus.PENDING, ReviewReason.REPLACES_PENDING
    considered, drawn = _draw_counts(session, project.id)
    if draw_for_review(settings.review_share, considered, drawn, _DRAW_RNG):
        return ReviewStatus.PENDING, ReviewReason.DRAWN
    return ReviewStatus.APPROVED, ReviewReason.NOT_DRAWN


def open_review(
    session: Session,
    project: Project,
    correction_id: str,
    *,
    previous_id: str | None = None,
    previous_status: ReviewStatus | None = None,
    reviewer_edit: bool = False,
) -> Correction:
    """Give a new correction its review status, when the project requires review.

    A correction replacing a rejected one resubmits it (always reviewed, linked by
    ``resubmits``); one replacing a correction still pending waits in its place
    (no second chance at the draw); a reviewer's edit carries its reviewer's
    approval; any other is drawn for review at the project's ``review_share``
    (:func:`prelabel.reviewing.draw_for_review`) or else approved at once. The
    reason is kept with the correction. Without required review the status stays
    ``not_required``.
    """
    row = session.get(CorrectionRow, correction_id)
    if row is None:
        raise CorrectionNotFound(correction_id)
    if not project.review.review_required:
        return to_correction(row)
    status, reason = _first_review_state(session, project, previous_status, reviewer_edit)
    row.review_status = status
    row.review_reason = reason
    if reason is ReviewReason.RESUBMISSION:
        row.resubmits = previous_id
    if status is ReviewStatus.APPROVED:
        row.reviewed_at = utcnow()
    session.flush()
    logger.info("correction %s review: %s (%s)", row.id, status, reason)
    return to_correction(row)


def trainable_corrections(session: Session, project: Project) -> list[Correction]:
    """The corrections training uses, oldest first: the current ones, and with review
    required only those approved (:func:`prelabel.reviewing.trainable_clause`)."""
    rows = session.scalars(
        select(CorrectionRow)
        .where(trainable_clause(project.id, review_required=project.review.review_required))
        .order_by(CorrectionRow.created_at, CorrectionRow.id)
    )
    return [to_correction(row) for row in rows]


def current_corrections(session: Session, project_id: str) -> list[Correction]:
    """The project's current (not superseded) corrections, oldest first."""
    rows = session.scalars(
        select(CorrectionRow)
        .where(CorrectionRow.project_id == project_id, CorrectionRow.is_current.is_(True))
        .order_by(CorrectionRow.created_at, CorrectionRow.id)
    )
    return [to_correction(row) for row in rows]


def correction_history(session: Session, image: Image) -> list[Correction]:
    """Every correction of ``image``, newest first."""
    rows = session.scalars(
        select(CorrectionRow)
        .where(CorrectionRow.project_id == image.project_id, CorrectionRow.image_id == image.id)
        .order_by(CorrectionRow.created_at.desc())
    )
    return [to_correction(row) for row in rows]


def load_correction_mask(blobs: BlobStore, correction: Correction) -> npt.NDArray[np.integer]:
    """The correction's (H, W) index mask."""
    return load_mask(blobs, correction.mask_key)


def load_mask(blobs: BlobStore, mask_key: str) -> npt.NDArray[np.integer]:
    """The (H, W) index mask a correction stored under ``mask_key``."""
    return decode_index_png(blobs.get(mask_key), max_pixels=2**31)


def _is_withdrawn(session: Session, correction_id: str) -> bool:
    return session.get(CorrectionWithdrawalRow, correction_id) is not None


def withdraw_correction(
    session: Session, correction_id: str, *, reason: str, actor: str
) -> Correction:
    """Take a correction back, e.g. because its annotation was deleted in the annotation tool.

    The correction stays in the history (not current, recorded as withdrawn). If
    it was the image's current correction, the newest earlier one that is not
    withdrawn itself (following ``supersedes``) becomes current again; without
    one, the image has no correction any more. Withdrawing twice changes nothing.

    Returns:
        The withdrawn correction.

    Raises:
        CorrectionNotFound: no correction has this id.
    """
    row = session.get(CorrectionRow, correction_id)
    if row is None:
        raise CorrectionNotFound(correction_id)
    if _is_withdrawn(session, correction_id):
        return to_correction(row)
    session.add(CorrectionWithdrawalRow(correction_id=row.id, reason=reason))
    record_audit(
        session,
        row.project_id,
        actor=actor,
        action=AuditAction.CORRECTION_WITHDRAWN,
        image_id=row.image_id,
        details={"correction_id": row.id},
    )
    restored: CorrectionRow | None = None
    if row.is_current:
        row.is_current = False
        previous_id = row.supersedes
        while previous_id is not None and restored is None:
            previous = session.get(CorrectionRow, previous_id)
            if previous is None:
                break
            if _is_withdrawn(session, previous.id):
                previous_id = previous.supersedes
            else:
                restored = previous
        if restored is not None:
            restored.is_current = True
    session.flush()
    logger.info(
        "withdrew correction %s of image %s (%s); current now %s",
        row.id,
        row.image_id,
        reason,
        restored.id if restored else None,
    )
    return to_correction(row)
