"""Quality-review measures: reviewer agreement per annotator, reviewers' volume and time,
and inter-annotator agreement where two people corrected the same image.

Reported under ``review`` in ``GET /projects/{project}/metrics``; the acceptance
measures beside them are :mod:`prelabel.reports`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable
from functools import partial
from itertools import combinations

from pydantic import BaseModel
from sqlalchemy import distinct, func, select
from sqlalchemy.orm import Session

from prelabel.blobs import BlobStore
from prelabel.corrections import load_mask
from prelabel.metrics import MaskAgreement, mask_agreement
from prelabel.projects import Project
from prelabel.reviewing import ReviewDecision, ReviewStatus
from prelabel.single_flight import SingleFlight
from prelabel.tables import CorrectionRow, CorrectionWithdrawalRow, ReviewRow


class AnnotatorReviewSummary(BaseModel):
    """How reviewers judged one annotator's corrections (one entry per review decision)."""

    reviews: int
    rejections: int
    rejection_rate: float | None
    edits: int
    """Approvals with the reviewer's edited mask."""
    mean_agreement_iou: float | None
    """Reviewer-vs-annotator mean IoU over approvals: 1.0 unedited, measured when edited."""
    mean_changed_pixels: float | None
    """Pixels the reviewer changed, over approvals (0 unedited)."""
    mean_time_to_review_s: float | None
    """From the correction's submission to the review decision."""


class ReviewerSummary(BaseModel):
    """One reviewer's volume and time."""

    reviews: int
    approvals: int
    rejections: int
    edits: int
    mean_review_time_s: float | None
    """Time spent per review, as the reviewer's client reported it (``review_time_s``)."""
    mean_time_to_review_s: float | None


class ClassAgreement(BaseModel):
    name: str
    pairs: int
    mean_iou: float | None


class InterAnnotatorAgreement(BaseModel):
    """Mean IoU between the masks two different annotators made of the same image.

    Each annotator's newest correction of the image counts (reviewers' edits and
    withdrawn corrections do not); every pair of annotators of an image is a pair.
    """

    images: int
    pairs: int
    mean_iou: float | None
    by_class: dict[str, ClassAgreement]


class ReviewMeasures(BaseModel):
    """The review section of the project metrics."""

    review_required: bool
    current_by_status: dict[str, int]
    """Current corrections per review status."""
    by_annotator: dict[str, AnnotatorReviewSummary]
    by_reviewer: dict[str, ReviewerSummary]
    inter_annotator: InterAnnotatorAgreement


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _annotator_summary(rows: list[tuple[ReviewRow, float]]) -> AnnotatorReviewSummary:
    approvals = [r for r, _ in rows if r.decision == ReviewDecision.APPROVE]
    rejections = len(rows) - len(approvals)
    return AnnotatorReviewSummary(
        reviews=len(rows),
        rejections=rejections,
        rejection_rate=rejections / len(rows) if rows else None,
        edits=sum(r.edited_correction_id is not None for r in approvals),
        mean_agreement_iou=_mean(r.mean_iou for r in approvals),
        mean_changed_pixels=_mean(
            None if r.changed_pixels is None else float(r.changed_pixels) for r in approvals
        ),
        mean_time_to_review_s=_mean(wait for _, wait in rows),
    )


def _reviewer_summary(rows: list[tuple[ReviewRow, float]]) -> ReviewerSummary:
    approvals = [r for r, _ in rows if r.decision == ReviewDecision.APPROVE]
    return ReviewerSummary(
        reviews=len(rows),
        approvals=len(approvals),
        rejections=len(rows) - len(approvals),
        edits=sum(r.edited_correction_id is not None for r in approvals),
        mean_review_time_s=_mean(r.review_time_s for r, _ in rows),
        mean_time_to_review_s=_mean(wait for _, wait in rows),
    )


def _latest_per_annotator(session: Session, project_id: str) -> dict[str, dict[str, str]]:
    """Image id -> correction id -> mask key, for the newest correction of each annotator
    (reviewers' edits and withdrawn corrections left out) of the images that two people
    or more corrected."""
    annotators_edits = (CorrectionRow.project_id == project_id, CorrectionRow.source != "review")
    # The database narrows thousands of corrections to the images two people corrected.
    shared_images = (
        select(CorrectionRow.image_id)
        .where(*annotators_edits)
        .group_by(CorrectionRow.image_id)
        .having(func.count(distinct(CorrectionRow.annotator)) >= 2)
    )
    keys = session.execute(
        select(CorrectionRow.id, CorrectionRow.image_id)
        .add_columns(CorrectionRow.annotator, CorrectionRow.mask_key)
        .where(
            *annotators_edits,
            CorrectionRow.image_id.in_(shared_images),
            CorrectionRow.id.not_in(select(CorrectionWithdrawalRow.correction_id)),
        )
        .order_by(CorrectionRow.created_at.desc(), CorrectionRow.id)
    )
    newest: dict[str, dict[str, tuple[str, str]]] = defaultdict(dict)
    for correction_id, image_id, annotator, mask_key in keys:
        newest[image_id].setdefault(annotator, (correction_id, mask_key))
    return {image: dict(by.values()) for image, by in newest.items() if len(by) >= 2}


class AgreementCache:
    """Agreement of two corrections' masks, kept by the pair of ids (a stored correction
    never changes), so that each pair is decoded and compared once per process rather
    than at every metrics request; concurrent requests missing the same pair compute it
    once. Bounded: the least recently used pair leaves first."""

    def __init__(self, capacity: int = 100_000) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, str], MaskAgreement] = OrderedDict()
        self._lock = threading.Lock()
        self._in_flight: SingleFlight[tuple[str, str], MaskAgreement] = SingleFlight()

    def __len__(self) -> int:
        return len(self._items)

    def agreement(
        self, pair: tuple[str, str], compute: Callable[[], MaskAgreement]
    ) -> MaskAgreement:
        """The agreement of ``pair``, computed by ``compute`` unless kept already."""
        with self._lock:
            if pair in self._items:
                self._items.move_to_end(pair)
                return self._items[pair]
        return self._in_flight.run(pair, partial(self._compute_and_keep, pair, compute))

    def _compute_and_keep(
        self, pair: tuple[str, str], compute: Callable[[], MaskAgreement]
    ) -> MaskAgreement:
        with self._lock:  # a caller that just finished computing it may have kept it
            if pair in self._items:
                return self._items[pair]
        found = compute()
        with self._lock:
            self._items[pair] = found
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return found


def inter_annotator_agreement(
    session: Session, blobs: BlobStore, project: Project, cache: AgreementCache | None = None
) -> InterAnnotatorAgreement:
    """Mean IoU between different annotators' masks of the same images, overall and per class.

    Reads the masks of the images concerned only (those two people corrected), and only
    for pairs that ``cache`` does not hold yet.
    """
    schema = project.label_schema
    pair_ious: list[float] = []
    class_ious: dict[int, list[float]] = defaultdict(list)
    images = _latest_per_annotator(session, project.id)

    def compare(first_mask_key: str, second_mask_key: str) -> MaskAgreement:
        return mask_agreement(
            load_mask(blobs, first_mask_key),
            load_mask(blobs, second_mask_key),
            num_classes=schema.num_classes,
            ignore_index=schema.ignore_index,
        )

    for mask_keys in images.values():
        for first, second in combinations(mask_keys, 2):
            compute = partial(compare, mask_keys[first], mask_keys[second])
            agreement = compute() if cache is None else cache.agreement((first, second), compute)
            pair_ious.append(agreement.mean_iou)
            for class_id, iou in agreement.per_class_iou.items():
                class_ious[class_id].append(iou)
    return InterAnnotatorAgreement(
        images=len(images),
        pairs=len(pair_ious),
        mean_iou=_mean(pair_ious),
        by_class={
            str(c.id): ClassAgreement(
                name=c.name, pairs=len(class_ious[c.id]), mean_iou=_mean(class_ious[c.id])
            )
            for c in schema.classes
        },
    )


def review_measures(
    session: Session, blobs: BlobStore, project: Project, cache: AgreementCache | None = None
) -> ReviewMeasures:
    """Reviewer agreement per annotator, reviewers' volume and time, inter-annotator agreement
    (pair comparisons kept in ``cache`` when given)."""
    by_annotator: dict[str, list[tuple[ReviewRow, float]]] = defaultdict(list)
    by_reviewer: dict[str, list[tuple[ReviewRow, float]]] = defaultdict(list)
    reviewed = session.execute(
        select(ReviewRow, CorrectionRow.created_at)
        .join(CorrectionRow, CorrectionRow.id == ReviewRow.correction_id)
        .where(ReviewRow.project_id == project.id)
        .order_by(ReviewRow.created_at)
    )
    for review, submitted_at in reviewed:
        entry = (review, max((review.created_at - submitted_at).total_seconds(), 0.0))
        by_annotator[review.annotator].append(entry)
        by_reviewer[review.reviewer].append(entry)
    statuses = session.execute(
        select(CorrectionRow.review_status, func.count())
        .where(CorrectionRow.project_id == project.id, CorrectionRow.is_current.is_(True))
        .group_by(CorrectionRow.review_status)
    ).all()
    counts = {status.value: 0 for status in ReviewStatus} | {s: int(n) for s, n in statuses}
    return ReviewMeasures(
        review_required=project.review.review_required,
        current_by_status=counts,
        by_annotator={k: _annotator_summary(v) for k, v in sorted(by_annotator.items())},
        by_reviewer={k: _reviewer_summary(v) for k, v in sorted(by_reviewer.items())},
        inter_annotator=inter_annotator_agreement(session, blobs, project, cache),
    )
