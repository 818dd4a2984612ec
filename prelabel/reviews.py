"""Quality review of corrections: settings changes, reviewers' decisions, the queues.

:func:`review_correction` is the one way a reviewer decides on a correction (HTTP
today; any other path must call it too). A decision is recorded with the
reviewer-vs-annotator agreement, audited, and may make the correction count for
training (:func:`prelabel.reviewing.trainable_clause`), so the training policy is
applied afterwards, as after a correction.
"""

from __future__ import annotations

import logging
from datetime import datetime

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select
from sqlalchemy.orm import Session

from prelabel.audit import AuditAction, record_audit
from prelabel.blobs import BlobStore
from prelabel.corrections import (
    Correction,
    check_seconds,
    load_correction_mask,
    open_review,
    record_correction,
    to_correction,
)
from prelabel.errors import ConflictError, CorrectionNotFound, Forbidden, ValidationFailed
from prelabel.images import get_image
from prelabel.metrics import compare_masks
from prelabel.projects import Project, store_review_settings
from prelabel.reviewing import (
    ReviewDecision,
    ReviewReason,
    ReviewSettingsChange,
    ReviewStatus,
)
from prelabel.tables import CorrectionRow, ImageRow, ReviewRow, utcnow
from prelabel.triggers import apply_policy_after_commit

logger = logging.getLogger(__name__)

REVIEW_SOURCE = "review"
"""``source`` of a correction made from a reviewer's edited mask."""


class Review(BaseModel):
    """One reviewer's decision on one correction.

    ``mean_iou``, ``changed_pixels`` and ``changed_pixel_fraction`` compare the
    annotator's mask with the reviewer's: 1.0 / 0 / 0 for a plain approval, measured
    for an approval with an edited mask, None for a rejection (no reviewer mask).
    """

    model_config = ConfigDict(frozen=True, from_attributes=True)

    id: str
    correction_id: str
    annotator: str
    reviewer: str
    decision: ReviewDecision
    comment: str
    edited_correction_id: str | None
    mean_iou: float | None
    changed_pixels: int | None
    changed_pixel_fraction: float | None
    per_class_iou: dict[str, float] | None
    review_time_s: float | None
    created_at: datetime


class ReviewOutcome(BaseModel):
    """What a review did: the decision, the reviewed correction's new state and, after an
    edit, the correction made from the reviewer's mask (now current)."""

    model_config = ConfigDict(frozen=True)

    review: Review
    correction: Correction
    edited_correction: Correction | None


class ReviewItem(BaseModel):
    """A correction in the review queue, with what a reviewer needs to judge it."""

    model_config = ConfigDict(frozen=True)

    correction: Correction
    filename: str
    width: int
    height: int
    approvals: list[str]
    """Reviewers who approved it so far (``min_reviewers`` are needed)."""
    reviews: list[Review]
    """Its reviews, and those of the rejected corrections it resubmits, newest first."""


class RejectedCorrection(BaseModel):
    """A rejected correction waiting for its annotator, with the rejection."""

    model_config = ConfigDict(frozen=True)

    correction: Correction
    rejection: Review


def change_review_settings(
    session: Session, project: Project, change: ReviewSettingsChange, *, actor: str
) -> Project:
    """Change the project's review settings (audited, one transaction).

    Turning review on puts the current corrections recorded without review through
    the draw, as if they were new: the backlog is reviewed at ``review_share``.
    Then the training policy is applied (what counts for training may have changed).
    """
    before = project.review
    after = change.applied_to(before)
    updated = store_review_settings(session, project.id, after)
    record_audit(
        session,
        project.id,
        actor=actor,
        action=AuditAction.PROJECT_SETTINGS_CHANGED,
        details={"before": before.model_dump(), "after": after.model_dump()},
    )
    if after.review_required and not before.review_required:
        backlog = session.scalars(
            select(CorrectionRow.id)
            .where(
                CorrectionRow.project_id == project.id,
                CorrectionRow.is_current.is_(True),
                CorrectionRow.review_status == ReviewStatus.NOT_REQUIRED,
            )
            .order_by(CorrectionRow.created_at, CorrectionRow.id)
        ).all()
        for correction_id in backlog:
            open_review(session, updated, correction_id)
        logger.info("project %s: %d corrections drawn for review", project.id, len(backlog))
    apply_policy_after_commit(session, updated)
    return updated


def _correction_row(session: Session, project: Project, correction_id: str) -> CorrectionRow:
    row = session.get(CorrectionRow, correction_id)
    if row is None or row.project_id != project.id:
        raise CorrectionNotFound(correction_id)
    return row


def _authors(session: Session, row: CorrectionRow) -> set[str]:
    """Who may not review ``row``: its annotator, and for a reviewer's edit, the
    annotator of the correction it edited."""
    authors = {row.annotator}
    if row.review_reason == ReviewReason.REVIEWER_EDIT and row.supersedes:
        edited = session.get(CorrectionRow, row.supersedes)
        if edited is not None:
            authors.add(edited.annotator)
    return authors


def _reviews_of(session: Session, correction_ids: list[str]) -> list[Review]:
    rows = session.scalars(
        select(ReviewRow)
        .where(ReviewRow.correction_id.in_(correction_ids))
        .order_by(ReviewRow.created_at.desc(), ReviewRow.id)
    )
    return [Review.model_validate(row) for row in rows]


def _approvals(session: Session, row: CorrectionRow) -> list[str]:
    approvers = [
        r.reviewer for r in _reviews_of(session, [row.id]) if r.decision is ReviewDecision.APPROVE
    ]
    if row.review_reason == ReviewReason.REVIEWER_EDIT:
        approvers.append(row.annotator)
    return sorted(set(approvers))


def _check_reviewable(session: Session, row: CorrectionRow, reviewer: str) -> None:
    if reviewer in _authors(session, row):
        raise Forbidden(f"correction {row.id} is {reviewer!r}'s own work: another must review it")
    if not row.is_current:
        raise ConflictError(
            f"correction {row.id} has been superseded; review the image's current correction"
        )
    if row.review_status != ReviewStatus.PENDING:
        raise ConflictError(f"correction {row.id} is {row.review_status}, not pending review")
    if reviewer in {r.reviewer for r in _reviews_of(session, [row.id])}:
        raise ConflictError(f"{reviewer!r} has already reviewed correction {row.id}")


def _agreement(
    project: Project, annotated: npt.NDArray[np.integer], reviewed: npt.NDArray[np.integer]
) -> dict[str, object]:
    schema = project.label_schema
    comparison = compare_masks(
        annotated,
        reviewed,
        num_classes=schema.num_classes,
        ignore_index=schema.ignore_index,
        acceptance_threshold=project.acceptance_threshold,
    )
    return {
        "mean_iou": comparison.mean_iou,
        "changed_pixels": comparison.changed_pixels,
        "changed_pixel_fraction": comparison.changed_pixel_fraction,
        "per_class_iou": {str(k): v for k, v in comparison.per_class_iou.items()},
    }


class ReviewRequest(BaseModel):
    """A reviewer's decision, as the core takes it (the route parses the wire form)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    decision: ReviewDecision
    comment: str = ""
    mask: npt.NDArray[np.integer] | None = None
    """(H, W) index mask: the reviewer's edit (approve only)."""
    review_time_s: float | None = None


def review_correction(
    session: Session,
    blobs: BlobStore,
    project: Project,
    correction_id: str,
    request: ReviewRequest,
    *,
    reviewer: str,
) -> ReviewOutcome:
    """Record ``reviewer``'s decision on a pending correction, in the caller's transaction.

    A rejection sends the correction back to its annotator at once. An approval
    counts towards ``min_reviewers`` distinct approvals; with an edited mask, the
    mask becomes the image's current correction, attributed to the reviewer (the
    annotator's stays in the history, approved with the reviewer's fixes), and the
    agreement between the two masks is recorded.

    Raises:
        CorrectionNotFound: no such correction in the project.
        Forbidden: the reviewer made (or is the annotator behind) the correction.
        ConflictError: the correction is superseded, not pending, or already
            reviewed by this reviewer.
        ValidationFailed: a mask with a rejection, or a review time that is negative or
            not finite.
        SchemaError: the mask has class ids outside the schema.
    """
    row = _correction_row(session, project, correction_id)
    _check_reviewable(session, row, reviewer)
    if request.mask is not None and request.decision is ReviewDecision.REJECT:
        raise ValidationFailed(
            "an edited mask comes with decision 'approve' (fix and accept); "
            "a rejection sends the correction back to its annotator"
        )
    check_seconds("review_time_s", request.review_time_s)
    agreement: dict[str, object] = {}
    edited: Correction | None = None
    if request.decision is ReviewDecision.APPROVE:
        agreement = {"mean_iou": 1.0, "changed_pixels": 0, "changed_pixel_fraction": 0.0}
    if request.mask is not None:
        annotated = to_correction(row)
        edited = record_correction(
            session,
            blobs,
            project=project,
            image=get_image(session, project.id, row.image_id),
            mask=request.mask,
            annotator=reviewer,
            source=REVIEW_SOURCE,
            actor=reviewer,
            draft_id=row.draft_id,
            reviewer_edit=True,
        )
        agreement = _agreement(project, load_correction_mask(blobs, annotated), request.mask)
    review = ReviewRow(
        project_id=project.id,
        correction_id=row.id,
        annotator=row.annotator,
        reviewer=reviewer,
        decision=request.decision,
        comment=request.comment,
        edited_correction_id=edited.id if edited else None,
        review_time_s=request.review_time_s,
        **agreement,
    )
    session.add(review)
    session.flush()
    _settle(session, project, row, request.decision, edited=edited is not None)
    record_audit(
        session,
        project.id,
        actor=reviewer,
        action=AuditAction.CORRECTION_REVIEWED,
        image_id=row.image_id,
        details={
            "correction_id": row.id,
            "review_id": review.id,
            "decision": request.decision.value,
            "edited_correction_id": review.edited_correction_id,
        },
    )
    apply_policy_after_commit(session, project)
    logger.info("review %s of correction %s: %s", review.id, row.id, request.decision)
    return ReviewOutcome(
        review=Review.model_validate(review),
        correction=to_correction(row),
        edited_correction=edited,
    )


def _settle(
    session: Session,
    project: Project,
    row: CorrectionRow,
    decision: ReviewDecision,
    *,
    edited: bool,
) -> None:
    """The reviewed correction's status after a decision."""
    if decision is ReviewDecision.REJECT:
        row.review_status = ReviewStatus.REJECTED
    elif edited or len(_approvals(session, row)) >= project.review.min_reviewers:
        row.review_status = ReviewStatus.APPROVED
    else:
        return
    row.reviewed_at = utcnow()
    session.flush()


def _resubmitted_chain(session: Session, row: CorrectionRow) -> list[str]:
    """``row`` and the rejected corrections it resubmits, transitively."""
    chain = [row.id]
    previous = row.resubmits
    while previous is not None and previous not in chain:
        chain.append(previous)
        earlier = session.get(CorrectionRow, previous)
        previous = earlier.resubmits if earlier is not None else None
    return chain


def review_queue(
    session: Session, project: Project, *, status: ReviewStatus, reviewer: str, limit: int
) -> list[ReviewItem]:
    """Current corrections with review ``status``, oldest first.

    For ``pending``: only those ``reviewer`` may review (not its own work, not one
    it already approved).
    """
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    rows = session.execute(
        select(CorrectionRow, ImageRow)
        .join(ImageRow, ImageRow.id == CorrectionRow.image_id)
        .where(
            CorrectionRow.project_id == project.id,
            CorrectionRow.is_current.is_(True),
            CorrectionRow.review_status == status,
        )
        .order_by(CorrectionRow.created_at, CorrectionRow.id)
    ).all()
    items: list[ReviewItem] = []
    for row, image in rows:
        approvals = _approvals(session, row)
        if status is ReviewStatus.PENDING and (
            reviewer in _authors(session, row) or reviewer in approvals
        ):
            continue
        items.append(
            ReviewItem(
                correction=to_correction(row),
                filename=image.filename,
                width=image.width,
                height=image.height,
                approvals=approvals,
                reviews=_reviews_of(session, _resubmitted_chain(session, row)),
            )
        )
        if len(items) == limit:
            break
    return items


def rejected_corrections(
    session: Session, project_id: str, annotator: str
) -> list[RejectedCorrection]:
    """``annotator``'s current corrections that a reviewer rejected, oldest rejection first."""
    rows = session.scalars(
        select(CorrectionRow)
        .where(
            CorrectionRow.project_id == project_id,
            CorrectionRow.is_current.is_(True),
            CorrectionRow.annotator == annotator,
            CorrectionRow.review_status == ReviewStatus.REJECTED,
        )
        .order_by(CorrectionRow.reviewed_at, CorrectionRow.id)
    ).all()
    found: list[RejectedCorrection] = []
    for row in rows:
        rejection = next(
            (r for r in _reviews_of(session, [row.id]) if r.decision is ReviewDecision.REJECT),
            None,
        )
        if rejection is not None:
            found.append(RejectedCorrection(correction=to_correction(row), rejection=rejection))
    return found
