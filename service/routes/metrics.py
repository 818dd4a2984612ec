"""``GET /projects/{project}/metrics``: acceptance and edit effort of drafts, as JSON or CSV."""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, Query, Response

from prelabel.report_sections import MetricsFilters, Period, correction_records, corrections_csv
from prelabel.reports import ProjectMetrics, project_metrics
from prelabel.review_metrics import review_measures
from service.auth import CallerDep
from service.deps import AgreementCacheDep, WorkspaceDep

router = APIRouter(prefix="/projects/{project}", tags=["metrics"])


class MetricsFormat(StrEnum):
    JSON = "json"
    CSV = "csv"


@router.get(
    "/metrics",
    response_model=ProjectMetrics,
    responses={200: {"content": {"application/json": {}, "text/csv": {}}}},
)
def get_metrics(
    project: str,
    caller: CallerDep,
    workspace: WorkspaceDep,
    agreement_cache: AgreementCacheDep,
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
    reviewers' volume and time, inter-annotator agreement.
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
        metrics = project_metrics(session, caller.checked_project, filters, period=period)
        review = review_measures(session, workspace.blobs, caller.checked_project, agreement_cache)
    return metrics.model_copy(update={"review": review})
