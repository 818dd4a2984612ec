"""``/projects/{project}/models``: the registry's versions of the project's network."""

from __future__ import annotations

from fastapi import APIRouter

from models.registry import ModelRecord, get_version, list_versions
from prelabel.projects import get_project
from service.deps import WorkspaceDep
from service.schemas import ModelDetailOut, ModelOut

router = APIRouter(prefix="/projects/{project}/models", tags=["models"])


@router.get("")
def get_models(project: str, workspace: WorkspaceDep) -> list[ModelOut]:
    """The project's model versions, newest first."""
    with workspace.sessions() as session:
        records: list[ModelRecord] = list_versions(session, get_project(session, project).id)
    return [ModelOut.model_validate(r.model_dump()) for r in records]


@router.get("/{version}")
def get_model(project: str, version: str, workspace: WorkspaceDep) -> ModelDetailOut:
    """One version with its lineage: parent, corrections trained on, held-out images, config."""
    with workspace.sessions() as session:
        record = get_version(session, get_project(session, project).id, version)
    return ModelDetailOut.model_validate(record.model_dump())
