"""``/users`` (admins) and ``/me``: accounts and their API tokens."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, status
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from prelabel.access import Role, role_in, visible_project_ids
from prelabel.accounts import IssuedToken, User, UserName, add_user, issue_token, list_users
from prelabel.accounts import revoke_tokens as revoke_user_tokens
from prelabel.database import transaction
from prelabel.projects import list_projects
from service.auth import CallerDep
from service.deps import WorkspaceDep

router = APIRouter(tags=["users"])

ExpiryDays = Annotated[
    int | None, Field(ge=1, le=3650, description="token lifetime; none: no expiry")
]


class UserRequest(BaseModel):
    """A new user."""

    model_config = ConfigDict(extra="forbid")

    name: UserName
    admin: StrictBool = False
    """JSON true or false only: lax parsing would read ``"yes"`` or ``1`` as an admin."""
    expires_in_days: ExpiryDays = None


class TokenRequest(BaseModel):
    """A new token for an existing user."""

    model_config = ConfigDict(extra="forbid")

    expires_in_days: ExpiryDays = None


class IssuedTokenOut(BaseModel):
    """A token, shown this once: prelabel keeps only its hash."""

    user: User
    token: str
    expires_at: datetime | None


class RevokedOut(BaseModel):
    user: str
    revoked_tokens: int


class MembershipOut(BaseModel):
    project_id: str
    project: str
    role: Role | None
    """None for an admin who is not a member (admins may do everything)."""


class MeOut(BaseModel):
    """The caller: name, whether a global admin, and its projects with roles."""

    name: str
    is_admin: bool
    projects: list[MembershipOut]


def _issued(issued: IssuedToken) -> IssuedTokenOut:
    return IssuedTokenOut(user=issued.user, token=issued.token, expires_at=issued.expires_at)


def _lifetime(days: int | None) -> timedelta | None:
    return timedelta(days=days) if days is not None else None


@router.get("/me")
def get_me(caller: CallerDep, workspace: WorkspaceDep) -> MeOut:
    """Who the token belongs to, and its role in each of its projects."""
    with workspace.sessions() as session:
        visible = visible_project_ids(session, caller.principal)
        projects = [p for p in list_projects(session) if visible is None or p.id in visible]
        memberships = [
            MembershipOut(
                project_id=p.id, project=p.name, role=role_in(session, caller.principal, p.id)
            )
            for p in projects
        ]
    return MeOut(name=caller.name, is_admin=caller.principal.is_admin, projects=memberships)


@router.get("/users")
def get_users(workspace: WorkspaceDep) -> list[User]:
    """Every user, with its number of active tokens and when one was last used."""
    with workspace.sessions() as session:
        return list_users(session)


@router.post("/users", status_code=status.HTTP_201_CREATED)
def post_user(body: UserRequest, caller: CallerDep, workspace: WorkspaceDep) -> IssuedTokenOut:
    """Create a user; the answer holds its token, shown only this once."""
    with transaction(workspace.sessions) as session:
        issued = add_user(
            session,
            body.name,
            is_admin=body.admin,
            actor=caller.name,
            expires_in=_lifetime(body.expires_in_days),
        )
    return _issued(issued)


@router.post("/users/{user}/tokens", status_code=status.HTTP_201_CREATED)
def post_token(
    user: str, caller: CallerDep, workspace: WorkspaceDep, body: TokenRequest | None = None
) -> IssuedTokenOut:
    """A new token for the user (earlier ones stay valid), shown only this once."""
    days = body.expires_in_days if body else None
    with transaction(workspace.sessions) as session:
        issued = issue_token(session, user, actor=caller.name, expires_in=_lifetime(days))
    return _issued(issued)


@router.delete("/users/{user}/tokens")
def delete_tokens(user: str, caller: CallerDep, workspace: WorkspaceDep) -> RevokedOut:
    """Revoke every token of the user; it keeps its memberships, a new token lets it back."""
    with transaction(workspace.sessions) as session:
        count = revoke_user_tokens(session, user, actor=caller.name)
    return RevokedOut(user=user, revoked_tokens=count)
