"""``GET /projects/{project}/metrics``: acceptance and edit effort of drafts."""

from __future__ import annotations

from fastapi import APIRouter

from prelabel.reports import ProjectMetrics, project_metrics
from prelabel.review_metrics import review_measures
from service.auth import CallerDep
from service.deps import WorkspaceDep

router = APIRouter(prefix="/projects/{project}", tags=["metrics"])


@router.get("/metrics")
def get_metrics(project: str, caller: CallerDep, workspace: WorkspaceDep) -> ProjectMetrics:
    """Acceptance rate, changed-pixel fraction, mean IoU: overall, per model version,
    per annotator and per class, over the current corrections that started from a draft
    (approved ones only when review is required); and under ``review``, reviewer
    agreement per annotator, reviewers' volume and time, inter-annotator agreement."""
    project_found = caller.checked_project
    with workspace.sessions() as session:
        metrics = project_metrics(session, project_found)
        review = review_measures(session, workspace.blobs, project_found)
    return metrics.model_copy(update={"review": review})
