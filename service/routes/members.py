"""``/projects/{project}/members``: who works on the project, in which role (managers)."""

from __future__ import annotations

from fastapi import APIRouter, status
from pydantic import BaseModel, ConfigDict

from prelabel.access import Role
from prelabel.database import transaction
from prelabel.memberships import Member, list_members, remove_member, set_member
from service.auth import CallerDep
from service.deps import WorkspaceDep

router = APIRouter(prefix="/projects/{project}/members", tags=["members"])


class MemberRequest(BaseModel):
    """The role to give."""

    model_config = ConfigDict(extra="forbid")

    role: Role


@router.get("")
def get_members(project: str, caller: CallerDep, workspace: WorkspaceDep) -> list[Member]:
    """The project's members and their roles."""
    with workspace.sessions() as session:
        return list_members(session, caller.checked_project)


@router.put("/{user}")
def put_member(
    project: str, user: str, body: MemberRequest, caller: CallerDep, workspace: WorkspaceDep
) -> Member:
    """Add the user with ``role``, or change its role (audited)."""
    with transaction(workspace.sessions) as session:
        return set_member(session, caller.checked_project, user, body.role, actor=caller.name)


@router.delete("/{user}", status_code=status.HTTP_204_NO_CONTENT)
def delete_member(project: str, user: str, caller: CallerDep, workspace: WorkspaceDep) -> None:
    """Take the user out of the project (audited)."""
    with transaction(workspace.sessions) as session:
        remove_member(session, caller.checked_project, user, actor=caller.name)
