"""``/projects/{project}/training-runs``: queue fine-tuning and follow its progress.

The service only enqueues; a ``prelabel worker`` process trains.
"""

from __future__ import annotations

from fastapi import APIRouter, status

from prelabel import jobs
from prelabel.database import transaction
from prelabel.jobs import RunTrigger, enqueue_training, list_training_runs
from service.auth import CallerDep
from service.deps import WorkspaceDep
from service.schemas import TrainingRunOut, TrainingRunRequest

router = APIRouter(prefix="/projects/{project}/training-runs", tags=["training"])


@router.post("", status_code=status.HTTP_202_ACCEPTED)
def post_training_run(
    project: str,
    caller: CallerDep,
    workspace: WorkspaceDep,
    request: TrainingRunRequest | None = None,
) -> TrainingRunOut:
    """Queue a training run (or return the one already queued: requests coalesce)."""
    body = request or TrainingRunRequest()
    with transaction(workspace.sessions) as session:
        return enqueue_training(
            session,
            caller.checked_project.id,
            trigger=RunTrigger.MANUAL,
            kind=body.kind,
            actor=caller.name,
        )


@router.get("")
def get_training_runs(
    project: str, caller: CallerDep, workspace: WorkspaceDep
) -> list[TrainingRunOut]:
    """The project's runs, newest first."""
    with workspace.sessions() as session:
        return list_training_runs(session, caller.checked_project.id)


@router.get("/{run}")
def get_training_run(
    project: str, run: str, caller: CallerDep, workspace: WorkspaceDep
) -> TrainingRunOut:
    """One run: status, progress, the version it produced and the promotion decision."""
    with workspace.sessions() as session:
        return jobs.get_training_run(session, caller.checked_project.id, run)
