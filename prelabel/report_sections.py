"""Sections of the project report beyond acceptance: effort saved, turnaround, time
series, queue and training runs, over the corrections a :class:`MetricsFilters` keeps.

All of it is computed from the database rows alone (no mask is loaded): the
draft-vs-correction comparison stored with each correction carries what an empty
draft would have left to change (``DraftComparison.scratch_*``).
"""

from __future__ import annotations

import csv
import io
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from prelabel.audit import AuditAction
from prelabel.errors import ValidationFailed
from prelabel.metrics import DraftComparison
from prelabel.model_versions import serving_version_name
from prelabel.projects import Project
from prelabel.reviewing import trainable_clause
from prelabel.tables import (
    AuditEventRow,
    CorrectionRow,
    DraftRow,
    ImageRow,
    JobRow,
    ModelStatus,
    ModelVersionRow,
)

NO_MODEL = "none"
"""Key (and filter value) of corrections of empty drafts (no model yet)."""

EFFORT_METHOD = (
    "Per correction that started from a draft: the draft left `changed_pixels` labelled pixels "
    "(correction not the ignore index) to change and `changed_regions` connected regions "
    "(8-connectivity); an empty draft (every pixel the schema's background class) would have "
    "left the labelled pixels that are not background, and their connected regions. Saved = "
    "empty-draft effort - draft effort, summed over the corrections; saved_pixel_fraction = "
    "saved pixels / empty-draft pixels. Corrections stored before the empty-draft baseline was "
    "recorded are counted in `not_measured` and left out of the sums."
)
TURNAROUND_METHOD = (
    "upload_to_draft_s: from the image's upload to the creation of the draft its correction "
    "started from; draft_to_correction_s: from that draft's creation (when it was computed and "
    "served) to the correction's arrival. p50/p90 are linear-interpolated percentiles over the "
    "corrections kept by the filters."
)


class Period(StrEnum):
    """The bucket of a time series: a UTC calendar day, or an ISO week (Monday first)."""

    DAY = "day"
    WEEK = "week"


class MetricsFilters(BaseModel):
    """Which current corrections a report covers; every field left None keeps all.

    ``since``/``until`` are UTC dates, both inclusive, on the correction's arrival.
    ``model_version`` is the version of the draft (``none`` for empty drafts);
    ``class_id`` keeps the corrections whose draft or correction contains the class.
    """

    model_config = ConfigDict(frozen=True)

    since: date | None = None
    until: date | None = None
    model_version: str | None = None
    annotator: str | None = None
    class_id: int | None = None


@dataclass(frozen=True)
class CorrectionRecord:
    """One current correction that started from a draft, with its image and draft times."""

    id: str
    image_id: str
    filename: str
    annotator: str
    model_version: str | None
    draft_id: str
    lead_time_s: float | None
    comparison: DraftComparison
    uploaded_at: datetime
    draft_at: datetime
    corrected_at: datetime

    @property
    def upload_to_draft_s(self) -> float:
        """Seconds from the image's upload to its draft (never negative)."""
        return max((self.draft_at - self.uploaded_at).total_seconds(), 0.0)

    @property
    def draft_to_correction_s(self) -> float:
        """Seconds from the draft to the correction (never negative)."""
        return max((self.corrected_at - self.draft_at).total_seconds(), 0.0)


def _filtered(query: Select[Any], filters: MetricsFilters) -> Select[Any]:
    if filters.since is not None:
        start = datetime.combine(filters.since, time(), tzinfo=UTC)
        query = query.where(CorrectionRow.created_at >= start)
    if filters.until is not None and filters.until < date.max:  # date.max: no day after it
        end = datetime.combine(filters.until + timedelta(days=1), time(), tzinfo=UTC)
        query = query.where(CorrectionRow.created_at < end)
    if filters.model_version == NO_MODEL:
        query = query.where(CorrectionRow.model_version.is_(None))
    elif filters.model_version is not None:
        query = query.where(CorrectionRow.model_version == filters.model_version)
    if filters.annotator is not None:
        query = query.where(CorrectionRow.annotator == filters.annotator)
    return query


def correction_records(
    session: Session, project: Project, filters: MetricsFilters
) -> list[CorrectionRecord]:
    """The project's counted corrections (current; approved too when review is required,
    ``prelabel.reviewing.trainable_clause``) with a draft comparison that ``filters`` keep,
    oldest first.

    Raises:
        SchemaError: ``filters.class_id`` is not a class of the project.
        ValidationFailed: ``filters.since`` is after ``filters.until``.
    """
    check_filters(filters, project)
    query = (
        select(
            CorrectionRow.id,
            CorrectionRow.image_id,
            ImageRow.filename,
            CorrectionRow.annotator,
            CorrectionRow.model_version,
            CorrectionRow.draft_id,
            CorrectionRow.lead_time_s,
            CorrectionRow.metrics,
            ImageRow.created_at,
            DraftRow.created_at,
            CorrectionRow.created_at,
        )
        .join(DraftRow, DraftRow.id == CorrectionRow.draft_id)
        .join(ImageRow, ImageRow.id == CorrectionRow.image_id)
        .where(trainable_clause(project.id, review_required=project.review.review_required))
        .order_by(CorrectionRow.created_at, CorrectionRow.id)
    )
    records = []
    for row in session.execute(_filtered(query, filters)):
        (id_, image_id, filename, annotator, version, draft_id, lead, metrics, *times) = row
        if metrics is None:
            continue
        comparison = DraftComparison.from_dict(metrics)
        if filters.class_id is not None and filters.class_id not in comparison.per_class_iou:
            continue
        uploaded_at, draft_at, corrected_at = times
        records.append(
            CorrectionRecord(
                id=id_,
                image_id=image_id,
                filename=filename,
                annotator=annotator,
                model_version=version,
                draft_id=draft_id,
                lead_time_s=lead,
                comparison=comparison,
                uploaded_at=uploaded_at,
                draft_at=draft_at,
                corrected_at=corrected_at,
            )
        )
    return records


class EffortSaved(BaseModel):
    """What the drafts left to change against what empty drafts would have (see the method)."""

    corrections: int
    not_measured: int
    draft_changed_pixels: int
    empty_draft_changed_pixels: int
    saved_pixels: int
    saved_pixel_fraction: float | None
    draft_changed_regions: int
    empty_draft_changed_regions: int
    saved_regions: int


def effort_saved(records: Sequence[CorrectionRecord]) -> EffortSaved:
    """Sum the effort drafts saved over ``records`` (:data:`EFFORT_METHOD`)."""
    measured = [r.comparison for r in records if r.comparison.scratch_changed_pixels is not None]
    draft_px = sum(c.changed_pixels for c in measured)
    empty_px = sum(c.scratch_changed_pixels or 0 for c in measured)
    draft_regions = sum(c.changed_regions for c in measured)
    empty_regions = sum(c.scratch_changed_regions or 0 for c in measured)
    return EffortSaved(
        corrections=len(measured),
        not_measured=len(records) - len(measured),
        draft_changed_pixels=draft_px,
        empty_draft_changed_pixels=empty_px,
        saved_pixels=empty_px - draft_px,
        saved_pixel_fraction=(empty_px - draft_px) / empty_px if empty_px else None,
        draft_changed_regions=draft_regions,
        empty_draft_changed_regions=empty_regions,
        saved_regions=empty_regions - draft_regions,
    )


class Quantiles(BaseModel):
    """p50 and p90 of a duration in seconds over ``count`` values (None when there are none)."""

    count: int
    p50: float | None
    p90: float | None


def quantiles(values: Sequence[float]) -> Quantiles:
    """p50/p90 of ``values``, linear interpolation between order statistics."""
    if not values:
        return Quantiles(count=0, p50=None, p90=None)
    p50, p90 = np.percentile(np.asarray(values, dtype=np.float64), [50, 90])
    return Quantiles(count=len(values), p50=float(p50), p90=float(p90))


class Turnaround(BaseModel):
    """How long images wait for a draft, and drafts for their correction (see the method)."""

    upload_to_draft_s: Quantiles
    draft_to_correction_s: Quantiles


def turnaround(records: Sequence[CorrectionRecord]) -> Turnaround:
    """The turnaround quantiles of ``records`` (:data:`TURNAROUND_METHOD`)."""
    return Turnaround(
        upload_to_draft_s=quantiles([r.upload_to_draft_s for r in records]),
        draft_to_correction_s=quantiles([r.draft_to_correction_s for r in records]),
    )


class SeriesPoint(BaseModel):
    """One bucket of the time series; rates are None in a bucket without corrections."""

    start: date
    corrections: int
    acceptance_rate: float | None
    mean_changed_pixel_fraction: float | None
    mean_changed_regions: float | None
    mean_iou: float | None
    mean_lead_time_s: float | None
    turnaround: Turnaround
    effort_saved: EffortSaved


class VersionEvent(BaseModel):
    """A change of the serving version (from the audit trail): promotion, rollback, pin."""

    at: datetime
    action: str
    version: str
    previous: str | None
    actor: str
    automatic: bool


class TimeSeries(BaseModel):
    """Per-bucket measures from the first to the last correction, empty buckets included."""

    period: Period
    points: list[SeriesPoint]
    version_events: list[VersionEvent]


def bucket_start(moment: datetime, period: Period) -> date:
    """The first day of the bucket holding ``moment`` (its UTC date; Monday for weeks)."""
    day = moment.astimezone(UTC).date()
    return day - timedelta(days=day.weekday()) if period is Period.WEEK else day


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _point(start: date, records: list[CorrectionRecord]) -> SeriesPoint:
    comparisons = [r.comparison for r in records]
    return SeriesPoint(
        start=start,
        corrections=len(records),
        acceptance_rate=_mean(1.0 if c.accepted else 0.0 for c in comparisons),
        mean_changed_pixel_fraction=_mean(c.changed_pixel_fraction for c in comparisons),
        mean_changed_regions=_mean(float(c.changed_regions) for c in comparisons),
        mean_iou=_mean(c.mean_iou for c in comparisons),
        mean_lead_time_s=_mean(r.lead_time_s for r in records),
        turnaround=turnaround(records),
        effort_saved=effort_saved(records),
    )


def time_series(
    session: Session,
    project: Project,
    records: Sequence[CorrectionRecord],
    period: Period,
    *,
    events: Sequence[VersionEvent] | None = None,
) -> TimeSeries:
    """``records`` bucketed by ``period`` of their arrival, with the serving-version
    changes (``events`` when the caller read them, else :func:`version_events`)."""
    buckets: dict[date, list[CorrectionRecord]] = defaultdict(list)
    for record in records:
        buckets[bucket_start(record.corrected_at, period)].append(record)
    points = []
    if buckets:
        step = timedelta(days=7 if period is Period.WEEK else 1)
        day, last = min(buckets), max(buckets)
        while day <= last:
            points.append(_point(day, buckets.get(day, [])))
            day += step
    if events is None:
        events = version_events(session, project)
    return TimeSeries(period=period, points=points, version_events=list(events))


def version_events(session: Session, project: Project) -> list[VersionEvent]:
    """Every change of the project's serving version, oldest first."""
    # Sorted here, not by the database: with ORDER BY, SQLite walks every event of the
    # project in time order (draft-served ones included) rather than the action index.
    rows = sorted(
        session.scalars(
            select(AuditEventRow).where(
                AuditEventRow.project_id == project.id,
                AuditEventRow.action.in_([AuditAction.PROMOTE.value, AuditAction.PIN.value]),
            )
        ),
        key=lambda row: (row.created_at, row.id),
    )
    return [
        VersionEvent(
            at=row.created_at,
            action=row.action,
            version=str(row.details.get("version", "")),
            previous=row.details.get("previous"),
            actor=row.actor,
            automatic=bool(row.details.get("automatic", False)),
        )
        for row in rows
    ]


class QueueStatus(BaseModel):
    """Images still without a correction, and whether the serving version's drafts wait for them."""

    images: int
    corrected: int
    queue_length: int
    serving_version: str | None
    drafts_precomputed: int
    """Queued images with a draft of the serving version already stored."""
    drafts_missing: int
    """Queued images that would be drafted on request (none stored for the serving version)."""


def queue_status(session: Session, project: Project) -> QueueStatus:
    """The project's labeling queue (filters do not apply: it is the state now)."""
    images = session.scalar(select(func.count()).where(ImageRow.project_id == project.id)) or 0
    corrected_ids = (
        select(CorrectionRow.image_id)
        .where(CorrectionRow.project_id == project.id, CorrectionRow.is_current.is_(True))
        .distinct()
    )
    corrected = session.scalar(select(func.count()).select_from(corrected_ids.subquery())) or 0
    version = serving_version_name(session, project.id)
    precomputed = 0
    if version is not None:
        drafted = (
            select(DraftRow.image_id)
            .where(
                DraftRow.project_id == project.id,
                DraftRow.model_version == version,
                DraftRow.image_id.not_in(corrected_ids),
            )
            .distinct()
        )
        precomputed = session.scalar(select(func.count()).select_from(drafted.subquery())) or 0
    queued = images - corrected
    return QueueStatus(
        images=images,
        corrected=corrected,
        queue_length=queued,
        serving_version=version,
        drafts_precomputed=precomputed,
        drafts_missing=queued - precomputed,
    )


class RunOutcome(StrEnum):
    """What came of a training run."""

    QUEUED = "queued"
    RUNNING = "running"
    FAILED = "failed"
    PROMOTED = "promoted"
    """Its candidate passed the gate (or was promoted by hand) and served."""
    REJECTED = "rejected"
    CANDIDATE = "candidate"
    """It succeeded and its version waits for a decision."""
    NO_MODEL = "no_model"
    """It succeeded without registering a version (nothing to train on)."""


class RunSummary(BaseModel):
    """One training run for the report."""

    id: str
    outcome: RunOutcome
    trigger: str
    kind: str
    model_version: str | None
    decision: str | None
    error: str | None
    progress: dict[str, object]
    candidate_miou: float | None
    serving_miou: float | None
    train_s: float | None
    created_at: datetime
    finished_at: datetime | None


class TrainingRunsSummary(BaseModel):
    """Training runs by outcome, and the most recent ones (newest first)."""

    by_outcome: dict[str, int]
    recent: list[RunSummary]


_VERSION_OUTCOME = {
    ModelStatus.SERVING.value: RunOutcome.PROMOTED,
    ModelStatus.RETIRED.value: RunOutcome.PROMOTED,
    ModelStatus.REJECTED.value: RunOutcome.REJECTED,
    ModelStatus.CANDIDATE.value: RunOutcome.CANDIDATE,
}


def _outcome(job: JobRow, version_status: dict[str, str]) -> RunOutcome:
    if job.status in (RunOutcome.QUEUED, RunOutcome.RUNNING, RunOutcome.FAILED):
        return RunOutcome(job.status)
    status = version_status.get(job.id)
    return _VERSION_OUTCOME.get(status, RunOutcome.NO_MODEL) if status else RunOutcome.NO_MODEL


def training_runs_summary(
    session: Session, project: Project, *, recent: int = 20
) -> TrainingRunsSummary:
    """The project's training runs (drafts jobs left out) by outcome, and the ``recent`` last."""
    jobs = list(
        session.scalars(
            select(JobRow)
            .where(JobRow.project_id == project.id, JobRow.task == "train")
            .order_by(JobRow.created_at.desc(), JobRow.id)
        )
    )
    version_status: dict[str, str] = {
        str(run_id): status
        for run_id, status in session.execute(
            select(ModelVersionRow.training_run_id, ModelVersionRow.status).where(
                ModelVersionRow.project_id == project.id,
                ModelVersionRow.training_run_id.is_not(None),
            )
        )
    }
    outcomes = [_outcome(job, version_status) for job in jobs]
    return TrainingRunsSummary(
        by_outcome=dict(sorted(Counter(o.value for o in outcomes).items())),
        recent=[_run_summary(job, outcome) for job, outcome in zip(jobs, outcomes, strict=True)][
            :recent
        ],
    )


def _run_summary(job: JobRow, outcome: RunOutcome) -> RunSummary:
    return RunSummary(
        id=job.id,
        outcome=outcome,
        trigger=job.trigger,
        kind=job.kind,
        model_version=job.model_version,
        decision=job.decision,
        error=job.error,
        progress=dict(job.progress or {}),
        candidate_miou=job.candidate_miou,
        serving_miou=job.serving_miou,
        train_s=job.train_s,
        created_at=job.created_at,
        finished_at=job.finished_at,
    )


CSV_COLUMNS = (
    "correction_id",
    "image_id",
    "image_filename",
    "annotator",
    "model_version",
    "draft_id",
    "accepted",
    "changed_pixel_fraction",
    "changed_pixels",
    "changed_regions",
    "mean_iou",
    "strokes",
    "empty_draft_changed_pixels",
    "empty_draft_changed_regions",
    "lead_time_s",
    "uploaded_at",
    "draft_at",
    "corrected_at",
    "upload_to_draft_s",
    "draft_to_correction_s",
)


def corrections_csv(records: Iterable[CorrectionRecord]) -> str:
    """One row per correction (columns :data:`CSV_COLUMNS`), times in ISO 8601 UTC."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in records:
        c = r.comparison
        writer.writerow(
            [
                r.id,
                r.image_id,
                r.filename,
                r.annotator,
                r.model_version or NO_MODEL,
                r.draft_id,
                str(c.accepted).lower(),
                c.changed_pixel_fraction,
                c.changed_pixels,
                c.changed_regions,
                c.mean_iou,
                "" if c.strokes is None else c.strokes,
                "" if c.scratch_changed_pixels is None else c.scratch_changed_pixels,
                "" if c.scratch_changed_regions is None else c.scratch_changed_regions,
                "" if r.lead_time_s is None else r.lead_time_s,
                r.uploaded_at.astimezone(UTC).isoformat(),
                r.draft_at.astimezone(UTC).isoformat(),
                r.corrected_at.astimezone(UTC).isoformat(),
                r.upload_to_draft_s,
                r.draft_to_correction_s,
            ]
        )
    return out.getvalue()


def check_filters(filters: MetricsFilters, project: Project) -> None:
    """Refuse filters that name no class of the project or an empty date range.

    Raises:
        ValidationFailed: ``since`` is after ``until``.
        SchemaError: ``class_id`` is not a class of the project.
    """
    if filters.since is not None and filters.until is not None and filters.since > filters.until:
        raise ValidationFailed(f"since {filters.since} is after until {filters.until}")
    if filters.class_id is not None:
        project.label_schema.class_by_id(filters.class_id)


class AnnotatorRow(BaseModel):
    """One annotator's volume, acceptance and median lead time."""

    annotator: str
    corrections: int
    acceptance_rate: float | None
    median_lead_time_s: float | None


def annotator_table(records: Sequence[CorrectionRecord]) -> list[AnnotatorRow]:
    """Per annotator, most corrections first (then by name)."""
    grouped: dict[str, list[CorrectionRecord]] = defaultdict(list)
    for record in records:
        grouped[record.annotator].append(record)
    rows = []
    for annotator, mine in grouped.items():
        leads = [r.lead_time_s for r in mine if r.lead_time_s is not None]
        rows.append(
            AnnotatorRow(
                annotator=annotator,
                corrections=len(mine),
                acceptance_rate=_mean(1.0 if r.comparison.accepted else 0.0 for r in mine),
                median_lead_time_s=float(np.median(leads)) if leads else None,
            )
        )
    return sorted(rows, key=lambda row: (-row.corrections, row.annotator))


def changed_fraction_histogram(records: Sequence[CorrectionRecord], bins: int = 10) -> list[int]:
    """Counts of changed-pixel fraction in ``bins`` equal bins over [0, 1] (1.0 in the last)."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    counts = [0] * bins
    for record in records:
        counts[min(int(record.comparison.changed_pixel_fraction * bins), bins - 1)] += 1
    return counts
