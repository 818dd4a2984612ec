"""``/projects/{project}/models``: the registry's versions of the project's network."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends

from models.registry import get_version, list_versions
from prelabel.database import transaction
from prelabel.model_versions import ServingAction, ServingChange, change_serving_version
from prelabel.report_snapshots import SectionsCache
from prelabel.workspace import Workspace
from service.auth import Caller, CallerDep
from service.deps import SectionsCacheDep, WorkspaceDep
from service.schemas import ModelAction, ModelDetailOut, ModelOut

router = APIRouter(prefix="/projects/{project}/models", tags=["models"])


@router.get("")
def get_models(project: str, caller: CallerDep, workspace: WorkspaceDep) -> list[ModelOut]:
    """The project's model versions, newest first (``trained_on_erased`` after an erasure)."""
    with workspace.sessions() as session:
        return list_versions(session, caller.checked_project.id)


@router.get("/{version}")
def get_model(
    project: str, version: str, caller: CallerDep, workspace: WorkspaceDep
) -> ModelDetailOut:
    """One version with its lineage: parent, corrections trained on, held-out images, config."""
    with workspace.sessions() as session:
        return get_version(session, caller.checked_project.id, version)


@dataclass(frozen=True)
class ServingChanger:
    """What a serving change needs: the stores, the metrics snapshot to drop, the caller."""

    workspace: Workspace
    sections: SectionsCache
    caller: Caller

    def change(self, version: str, action: ServingAction, body: ModelAction) -> ModelDetailOut:
        """Apply ``action`` to ``version`` (audited); the metrics' serving version follows."""
        project_id = self.caller.checked_project.id
        with transaction(self.workspace.sessions) as session:
            change = ServingChange(action, version, actor=self.caller.name, reason=body.reason)
            change_serving_version(session, project_id, change)
            detail = get_version(session, project_id, version)
        self.sections.forget_project(project_id)
        return detail


def _serving_changer(
    caller: CallerDep, workspace: WorkspaceDep, sections: SectionsCacheDep
) -> ServingChanger:
    return ServingChanger(workspace, sections, caller)


ServingChangerDep = Annotated[ServingChanger, Depends(_serving_changer)]


@router.post("/{version}/promote")
def promote_model(
    project: str, version: str, action: ModelAction, changer: ServingChangerDep
) -> ModelDetailOut:
    """Make ``version`` serve now (a manual promotion or a rollback), audited.

    A pinned project stays pinned to the version it names; unpin first.
    """
    return changer.change(version, ServingAction.PROMOTE, action)


@router.post("/{version}/pin")
def pin_model(
    project: str, version: str, action: ModelAction, changer: ServingChangerDep
) -> ModelDetailOut:
    """Serve ``version`` and keep it: automatic promotion stops until unpinned (audited)."""
    return changer.change(version, ServingAction.PIN, action)


@router.delete("/{version}/pin")
def unpin_model(
    project: str, version: str, action: ModelAction, changer: ServingChangerDep
) -> ModelDetailOut:
    """Resume automatic promotion (audited)."""
    return changer.change(version, ServingAction.UNPIN, action)
