"""``GET /projects/{project}/metrics``: acceptance and edit effort of drafts, as JSON or CSV."""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, Query, Response

from prelabel.report_sections import MetricsFilters, Period, correction_records, corrections_csv
from prelabel.report_snapshots import project_wide_sections
from prelabel.reports import ProjectMetrics, project_metrics
from service.admission import COMPUTED_READ_TURN
from service.auth import CallerDep
from service.deps import AgreementCacheDep, SectionsCacheDep, WorkspaceDep

router = APIRouter(prefix="/projects/{project}", tags=["metrics"])


class MetricsFormat(StrEnum):
    JSON = "json"
    CSV = "csv"


@router.get(
    "/metrics",
    response_model=ProjectMetrics,
    dependencies=[COMPUTED_READ_TURN],
    responses={200: {"content": {"application/json": {}, "text/csv": {}}}},
)
def get_metrics(
    project: str,
    caller: CallerDep,
    workspace: WorkspaceDep,
    agreement_cache: AgreementCacheDep,
    sections_cache: SectionsCacheDep,
    since: date | None = None,
    until: date | None = None,
    model_version: str | None = None,
    annotator: str | None = None,
    class_id: Annotated[int | None, Query(alias="class", ge=0)] = None,
    period: Period = Period.DAY,
    format: MetricsFormat = MetricsFormat.JSON,
) -> ProjectMetrics | Response:
    """Acceptance rate, changed-pixel fraction, mean IoU: overall, per model version,
    per annotator and per class, over the current corrections that started from a draft
    (approved ones only when review is required); with effort saved, turnaround, a time
    series per ``period``, the queue and training runs.

    ``since``/``until`` (UTC dates, inclusive), ``model_version`` (``none``: empty drafts),
    ``annotator`` and ``class`` (a class id) narrow the corrections. ``format=csv`` answers
    the per-correction table instead. Under ``review``: reviewer agreement per annotator,
    reviewers' volume and time, inter-annotator agreement. The sections about the whole
    project (``queue``, ``training_runs``, ``time_series.version_events``, ``review``) may be
    up to ``PRELABEL_METRICS_SECTIONS_MAX_AGE_S`` old: ``project_sections_at`` says when
    they were computed.
    """
    filters = MetricsFilters(
        since=since,
        until=until,
        model_version=model_version,
        annotator=annotator,
        class_id=class_id,
    )
    attachment = f'attachment; filename="{caller.checked_project.id}-corrections.csv"'
    with workspace.sessions() as session:
        if format is MetricsFormat.CSV:
            records = correction_records(session, caller.checked_project, filters)
            return Response(
                corrections_csv(records),
                media_type="text/csv; charset=utf-8",
                headers={"Content-Disposition": attachment},
            )
        found = caller.checked_project
        shared = sections_cache.sections(
            found.id,
            lambda: project_wide_sections(session, workspace.blobs, found, agreement_cache),
        )
        return project_metrics(session, found, filters, period=period, shared=shared)
