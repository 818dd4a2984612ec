"""``/projects/{project}/models``: the registry's versions of the project's network."""

from __future__ import annotations

from fastapi import APIRouter

from models.registry import (
    ModelRecord,
    get_version,
    list_versions,
    promote,
    serving_version,
)
from prelabel.audit import record_event
from prelabel.database import transaction
from prelabel.errors import ConflictError
from prelabel.jobs import enqueue_drafts
from prelabel.projects import get_project, set_pinned_version
from prelabel.tables import ModelStatus
from service.deps import WorkspaceDep
from service.schemas import ModelAction, ModelDetailOut, ModelOut

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


@router.post("/{version}/promote")
def promote_model(
    project: str, version: str, action: ModelAction, workspace: WorkspaceDep
) -> ModelDetailOut:
    """Make ``version`` serve now (a manual promotion or a rollback), audited.

    A pinned project stays pinned to the version it names; unpin first.
    """
    with transaction(workspace.sessions) as session:
        found = get_project(session, project)
        if found.pinned_version not in (None, version):
            raise ConflictError(f"project is pinned to {found.pinned_version}; unpin it first")
        previous = serving_version(session, found.id)
        record = promote(
            session,
            found.id,
            version,
            reason=f"manual promotion by {action.actor}: {action.reason}".rstrip(": "),
        )
        enqueue_drafts(session, found.id)
        record_event(
            session,
            found.id,
            actor=action.actor,
            action="promote",
            details={
                "version": version,
                "reason": action.reason,
                "previous": previous.version if previous else None,
            },
        )
    return ModelDetailOut.model_validate(record.model_dump())


@router.post("/{version}/pin")
def pin_model(
    project: str, version: str, action: ModelAction, workspace: WorkspaceDep
) -> ModelDetailOut:
    """Serve ``version`` and keep it: automatic promotion stops until unpinned (audited)."""
    with transaction(workspace.sessions) as session:
        found = get_project(session, project)
        record = get_version(session, found.id, version)
        if record.status is not ModelStatus.SERVING:
            record = promote(
                session,
                found.id,
                version,
                reason=f"pinned by {action.actor}: {action.reason}".rstrip(": "),
            )
        set_pinned_version(session, found.id, version)
        enqueue_drafts(session, found.id)
        record_event(
            session,
            found.id,
            actor=action.actor,
            action="pin",
            details={"version": version, "reason": action.reason},
        )
    return ModelDetailOut.model_validate(record.model_dump())


@router.delete("/{version}/pin")
def unpin_model(
    project: str, version: str, action: ModelAction, workspace: WorkspaceDep
) -> ModelDetailOut:
    """Resume automatic promotion (audited)."""
    with transaction(workspace.sessions) as session:
        found = get_project(session, project)
        if found.pinned_version != version:
            raise ConflictError(f"{version} is not pinned (pinned: {found.pinned_version})")
        set_pinned_version(session, found.id, None)
        record_event(
            session,
            found.id,
            actor=action.actor,
            action="unpin",
            details={"version": version, "reason": action.reason},
        )
        record = get_version(session, found.id, version)
    return ModelDetailOut.model_validate(record.model_dump())
