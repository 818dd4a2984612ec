"""``/projects/{project}/models``: the registry's versions of the project's network."""

from __future__ import annotations

from fastapi import APIRouter

from models.registry import get_version, list_versions
from prelabel.database import transaction
from prelabel.model_versions import ServingAction, ServingChange, change_serving_version
from prelabel.projects import get_project
from prelabel.workspace import Workspace
from service.deps import WorkspaceDep
from service.schemas import ModelAction, ModelDetailOut, ModelOut

router = APIRouter(prefix="/projects/{project}/models", tags=["models"])


@router.get("")
def get_models(project: str, workspace: WorkspaceDep) -> list[ModelOut]:
    """The project's model versions, newest first."""
    with workspace.sessions() as session:
        return list_versions(session, get_project(session, project).id)


@router.get("/{version}")
def get_model(project: str, version: str, workspace: WorkspaceDep) -> ModelDetailOut:
    """One version with its lineage: parent, corrections trained on, held-out images, config."""
    with workspace.sessions() as session:
        return get_version(session, get_project(session, project).id, version)


def _change(
    workspace: Workspace, project: str, version: str, action: ServingAction, body: ModelAction
) -> ModelDetailOut:
    with transaction(workspace.sessions) as session:
        project_id = get_project(session, project).id
        change = ServingChange(action, version, actor=body.actor, reason=body.reason)
        change_serving_version(session, project_id, change)
        return get_version(session, project_id, version)


@router.post("/{version}/promote")
def promote_model(
    project: str, version: str, action: ModelAction, workspace: WorkspaceDep
) -> ModelDetailOut:
    """Make ``version`` serve now (a manual promotion or a rollback), audited.

    A pinned project stays pinned to the version it names; unpin first.
    """
    return _change(workspace, project, version, ServingAction.PROMOTE, action)


@router.post("/{version}/pin")
def pin_model(
    project: str, version: str, action: ModelAction, workspace: WorkspaceDep
) -> ModelDetailOut:
    """Serve ``version`` and keep it: automatic promotion stops until unpinned (audited)."""
    return _change(workspace, project, version, ServingAction.PIN, action)


@router.delete("/{version}/pin")
def unpin_model(
    project: str, version: str, action: ModelAction, workspace: WorkspaceDep
) -> ModelDetailOut:
    """Resume automatic promotion (audited)."""
    return _change(workspace, project, version, ServingAction.UNPIN, action)
