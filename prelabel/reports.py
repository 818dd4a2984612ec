"""Project reports: how well drafts work, from the stored draft-vs-correction metrics.

:func:`project_metrics` answers ``GET /projects/{project}/metrics``; it reads the
corrections once (:func:`correction_records`, which the CSV table and the dashboard
share) and adds the time series, effort saved, queue and training-run sections of
``prelabel.report_sections``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime

from pydantic import BaseModel
from sqlalchemy.orm import Session

from prelabel.metrics import DraftComparison
from prelabel.projects import Project
from prelabel.report_sections import (
    EFFORT_METHOD,
    NO_MODEL,
    TURNAROUND_METHOD,
    CorrectionRecord,
    EffortSaved,
    MetricsFilters,
    Period,
    QueueStatus,
    TimeSeries,
    TrainingRunsSummary,
    Turnaround,
    correction_records,
    effort_saved,
    queue_status,
    time_series,
    training_runs_summary,
    turnaround,
)
from prelabel.report_snapshots import ProjectWideSections
from prelabel.review_metrics import ReviewMeasures

__all__ = ["NO_MODEL", "AcceptanceSummary", "ClassSummary", "ProjectMetrics", "project_metrics"]


class AcceptanceSummary(BaseModel):
    """Aggregates over a set of corrections that started from a draft."""

    corrections: int
    acceptance_rate: float | None
    mean_changed_pixel_fraction: float | None
    mean_iou: float | None
    mean_changed_regions: float | None
    mean_strokes: float | None
    mean_lead_time_s: float | None
    mean_turnaround_s: float | None


class ClassSummary(BaseModel):
    """Draft-vs-correction IoU of one class, over the corrections where it occurs."""

    name: str
    corrections: int
    mean_iou: float | None


class ProjectMetrics(BaseModel):
    """``GET /projects/{project}/metrics``."""

    project_id: str
    overall: AcceptanceSummary
    by_model_version: dict[str, AcceptanceSummary]
    by_annotator: dict[str, AcceptanceSummary]
    by_class: dict[str, ClassSummary]
    review: ReviewMeasures | None = None
    """Quality review: reviewer and inter-annotator agreement (``prelabel.review_metrics``)."""
    # [dashboard] sections; each is computed by prelabel.report_sections.
    filters: MetricsFilters
    effort_saved: EffortSaved
    effort_method: str = EFFORT_METHOD
    turnaround: Turnaround
    turnaround_method: str = TURNAROUND_METHOD
    time_series: TimeSeries
    queue: QueueStatus
    training_runs: TrainingRunsSummary
    project_sections_at: datetime | None = None
    """When ``queue``, ``training_runs``, ``time_series.version_events`` and ``review`` (the
    sections about the whole project, whatever the filters) were computed: a service process
    keeps them up to ``PRELABEL_METRICS_SECTIONS_MAX_AGE_S``; the rest is computed per request."""


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _summarise(rows: list[tuple[DraftComparison, float | None, float | None]]) -> AcceptanceSummary:
    return AcceptanceSummary(
        corrections=len(rows),
        acceptance_rate=_mean(1.0 if m.accepted else 0.0 for m, _, _ in rows),
        mean_changed_pixel_fraction=_mean(m.changed_pixel_fraction for m, _, _ in rows),
        mean_iou=_mean(m.mean_iou for m, _, _ in rows),
        mean_changed_regions=_mean(float(m.changed_regions) for m, _, _ in rows),
        mean_strokes=_mean(None if m.strokes is None else float(m.strokes) for m, _, _ in rows),
        mean_lead_time_s=_mean(lead for _, lead, _ in rows),
        mean_turnaround_s=_mean(turnaround for _, _, turnaround in rows),
    )


def project_metrics(
    session: Session,
    project: Project,
    filters: MetricsFilters | None = None,
    *,
    period: Period = Period.DAY,
    records: list[CorrectionRecord] | None = None,
    shared: ProjectWideSections | None = None,
) -> ProjectMetrics:
    """Acceptance, edit effort and IoU of the project's current corrections.

    Only corrections that started from a draft count, and of those the ones
    ``filters`` keep. Turnaround is the time from serving the draft to receiving
    its correction. The time series has one point per ``period``. Pass ``records``
    when the caller already read them (:func:`correction_records` with ``filters``), and
    ``shared`` to take the project-wide sections (review included) from a kept snapshot
    (``prelabel.report_snapshots``); without it they are read now, and review is left out.

    Raises:
        SchemaError: ``filters.class_id`` is not a class of the project.
        ValidationFailed: ``filters.since`` is after ``filters.until``.
    """
    filters = filters or MetricsFilters()
    if records is None:
        records = correction_records(session, project, filters)
    overall, by_version, by_annotator, by_class = _acceptance_sections(project, records)
    return ProjectMetrics(
        project_id=project.id,
        overall=overall,
        by_model_version=by_version,
        by_annotator=by_annotator,
        by_class=by_class,
        filters=filters,
        effort_saved=effort_saved(records),
        turnaround=turnaround(records),
        time_series=time_series(
            session,
            project,
            records,
            period,
            events=shared.version_events if shared else None,
        ),
        queue=shared.queue if shared else queue_status(session, project),
        training_runs=shared.training_runs if shared else training_runs_summary(session, project),
        review=shared.review if shared else None,
        project_sections_at=shared.computed_at if shared else None,
    )


_Sections = tuple[
    AcceptanceSummary,
    dict[str, AcceptanceSummary],
    dict[str, AcceptanceSummary],
    dict[str, ClassSummary],
]


def _acceptance_sections(project: Project, records: list[CorrectionRecord]) -> _Sections:
    """``overall``, ``by_model_version``, ``by_annotator``, ``by_class`` of ``records``."""
    overall: list[tuple[DraftComparison, float | None, float | None]] = []
    by_version: dict[str, list[tuple[DraftComparison, float | None, float | None]]] = defaultdict(
        list
    )
    by_annotator: dict[str, list[tuple[DraftComparison, float | None, float | None]]] = defaultdict(
        list
    )
    class_ious: dict[int, list[float]] = defaultdict(list)
    for record in records:
        comparison = record.comparison
        entry = (comparison, record.lead_time_s, record.draft_to_correction_s)
        overall.append(entry)
        by_version[record.model_version or NO_MODEL].append(entry)
        by_annotator[record.annotator].append(entry)
        for class_id, iou in comparison.per_class_iou.items():
            class_ious[int(class_id)].append(iou)
    by_class = {
        str(c.id): ClassSummary(
            name=c.name, corrections=len(class_ious[c.id]), mean_iou=_mean(class_ious[c.id])
        )
        for c in project.label_schema.classes
    }
    return (
        _summarise(overall),
        {k: _summarise(v) for k, v in sorted(by_version.items())},
        {k: _summarise(v) for k, v in sorted(by_annotator.items())},
        by_class,
    )
