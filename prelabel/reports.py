"""Project reports: how well drafts work, from the stored draft-vs-correction metrics."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from prelabel.metrics import DraftComparison
from prelabel.projects import Project
from prelabel.review_metrics import ReviewMeasures
from prelabel.reviewing import trainable_clause
from prelabel.tables import CorrectionRow, DraftRow

NO_MODEL = "none"
"""Key under which corrections of empty drafts (no model yet) are reported."""


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


def project_metrics(session: Session, project: Project) -> ProjectMetrics:
    """Acceptance, edit effort and IoU of the project's current corrections.

    Only corrections that started from a draft count, and when the project requires
    review only approved ones. Turnaround is the time from serving the draft to
    receiving its correction.
    """
    counted = trainable_clause(project.id, review_required=project.review.review_required)
    query = (
        select(CorrectionRow, DraftRow.created_at)
        .join(DraftRow, DraftRow.id == CorrectionRow.draft_id)
        .where(counted)
    )
    overall: list[tuple[DraftComparison, float | None, float | None]] = []
    by_version: dict[str, list[tuple[DraftComparison, float | None, float | None]]] = defaultdict(
        list
    )
    by_annotator: dict[str, list[tuple[DraftComparison, float | None, float | None]]] = defaultdict(
        list
    )
    class_ious: dict[int, list[float]] = defaultdict(list)
    for correction, served_at in session.execute(query):
        if correction.metrics is None:
            continue
        comparison = DraftComparison.from_dict(correction.metrics)
        turnaround = (correction.created_at - served_at).total_seconds()
        entry = (comparison, correction.lead_time_s, max(turnaround, 0.0))
        overall.append(entry)
        by_version[correction.model_version or NO_MODEL].append(entry)
        by_annotator[correction.annotator].append(entry)
        for class_id, iou in comparison.per_class_iou.items():
            class_ious[int(class_id)].append(iou)
    schema = project.label_schema
    return ProjectMetrics(
        project_id=project.id,
        overall=_summarise(overall),
        by_model_version={k: _summarise(v) for k, v in sorted(by_version.items())},
        by_annotator={k: _summarise(v) for k, v in sorted(by_annotator.items())},
        by_class={
            str(c.id): ClassSummary(
                name=c.name, corrections=len(class_ious[c.id]), mean_iou=_mean(class_ious[c.id])
            )
            for c in schema.classes
        },
    )
