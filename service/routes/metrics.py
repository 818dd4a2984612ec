"""``GET /projects/{project}/metrics``: acceptance and edit effort of drafts."""

from __future__ import annotations

from fastapi import APIRouter

from prelabel.reports import ProjectMetrics, project_metrics
from service.auth import CallerDep
from service.deps import WorkspaceDep

router = APIRouter(prefix="/projects/{project}", tags=["metrics"])


@router.get("/metrics")
def get_metrics(project: str, caller: CallerDep, workspace: WorkspaceDep) -> ProjectMetrics:
    """Acceptance rate, changed-pixel fraction, mean IoU: overall, per model version,
    per annotator and per class, over the current corrections that started from a draft."""
    with workspace.sessions() as session:
        return project_metrics(session, caller.checked_project)
