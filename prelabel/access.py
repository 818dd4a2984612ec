"""Who may do what: roles per project, the permissions each grants, and the one check.

The table here is the whole policy. Routes name a :class:`Permission` (the route
table in ``service/access_rules.py``); :func:`require` decides. A caller that is not
a member of a project is told the project does not exist (``ProjectNotFound``, the
same answer as for a project that really does not exist); a member whose role lacks
the permission gets ``Forbidden``. Global admins may do everything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from prelabel.errors import Forbidden, ProjectNotFound
from prelabel.projects import Project, get_project
from prelabel.tables import MembershipRow


class Role(StrEnum):
    """A user's role in one project."""

    ANNOTATOR = "annotator"
    REVIEWER = "reviewer"
    ML_ENGINEER = "ml-engineer"
    MANAGER = "manager"


class Permission(StrEnum):
    """One kind of action on a project's data."""

    VIEW_PROJECT = "view_project"
    """Project metadata and label schema; images, their bytes, the queue, drafts."""
    WRITE_CORRECTIONS = "write_corrections"
    """Submit corrections as oneself; read one's own."""
    READ_ALL_CORRECTIONS = "read_all_corrections"
    """Read every annotator's corrections."""
    REVIEW_CORRECTIONS = "review_corrections"
    """Open the review queue; approve or reject others' corrections (QA)."""
    CORRECT_ON_BEHALF = "correct_on_behalf"
    """Record a correction in another annotator's name (imports, tool connections)."""
    UPLOAD_IMAGES = "upload_images"
    READ_TRAINING = "read_training"
    """Training runs, models with their lineage, the training policy."""
    RUN_TRAINING = "run_training"
    """Queue training runs, set the policy, promote / pin / unpin models."""
    RUN_BULK_DRAFTS = "run_bulk_drafts"
    """Start and cancel bulk pre-labeling jobs (drafts of many images, on the worker's CPU)."""
    IMPORT = "import"
    EXPORT = "export"
    READ_METRICS = "read_metrics"
    READ_AUDIT = "read_audit"
    MANAGE_MEMBERS = "manage_members"
    MANAGE_PROJECT = "manage_project"
    """Change the project's settings (review workflow)."""
    MANAGE_INTEGRATIONS = "manage_integrations"
    """Bind annotation-tool projects to this project."""
    ERASE = "erase"
    """Erase images and everything made from them (GDPR)."""


_ANNOTATOR = frozenset({Permission.VIEW_PROJECT, Permission.WRITE_CORRECTIONS})
_READ_EVERYTHING = frozenset(
    {
        Permission.VIEW_PROJECT,
        Permission.READ_ALL_CORRECTIONS,
        Permission.READ_TRAINING,
        Permission.READ_METRICS,
        Permission.READ_AUDIT,
    }
)

ROLE_PERMISSIONS: Mapping[Role, frozenset[Permission]] = {
    Role.ANNOTATOR: _ANNOTATOR,
    Role.REVIEWER: _ANNOTATOR | {Permission.READ_ALL_CORRECTIONS, Permission.REVIEW_CORRECTIONS},
    Role.ML_ENGINEER: frozenset(
        {
            Permission.VIEW_PROJECT,
            Permission.WRITE_CORRECTIONS,
            Permission.READ_ALL_CORRECTIONS,
            Permission.CORRECT_ON_BEHALF,
            Permission.UPLOAD_IMAGES,
            Permission.READ_TRAINING,
            Permission.RUN_TRAINING,
            Permission.RUN_BULK_DRAFTS,
            Permission.IMPORT,
            Permission.EXPORT,
            Permission.READ_METRICS,
        }
    ),
    Role.MANAGER: _READ_EVERYTHING
    | {
        Permission.WRITE_CORRECTIONS,
        Permission.CORRECT_ON_BEHALF,
        Permission.UPLOAD_IMAGES,
        Permission.EXPORT,
        Permission.MANAGE_MEMBERS,
        Permission.MANAGE_PROJECT,
        Permission.REVIEW_CORRECTIONS,
        Permission.MANAGE_INTEGRATIONS,
        Permission.ERASE,
        Permission.RUN_BULK_DRAFTS,
    },
}
"""What each role may do in its project. Global admins may do everything everywhere."""


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: a user, or the local operator when auth is off."""

    user_id: str | None
    name: str
    is_admin: bool


def role_in(session: Session, principal: Principal, project_id: str) -> Role | None:
    """The caller's role in the project, or None when it is not a member."""
    if principal.user_id is None:
        return None
    role = session.scalar(
        select(MembershipRow.role).where(
            MembershipRow.project_id == project_id, MembershipRow.user_id == principal.user_id
        )
    )
    return Role(role) if role is not None else None


def may(session: Session, principal: Principal, project_id: str, permission: Permission) -> bool:
    """Whether the caller has ``permission`` in the project."""
    if principal.is_admin:
        return True
    role = role_in(session, principal, project_id)
    return role is not None and permission in ROLE_PERMISSIONS[role]


def require(
    session: Session, principal: Principal, project_ref: str, permission: Permission
) -> Project:
    """The project (by id or name) if the caller has ``permission`` in it.

    Raises:
        ProjectNotFound: No such project, or the caller is not a member: the two are
            indistinguishable on purpose.
        Forbidden: A member whose role does not grant ``permission``.
    """
    project = get_project(session, project_ref)
    if principal.is_admin:
        return project
    role = role_in(session, principal, project.id)
    if role is None:
        raise ProjectNotFound(project_ref)
    if permission not in ROLE_PERMISSIONS[role]:
        raise Forbidden(
            f"role {role.value!r} in project {project.name!r} does not allow {permission.value}"
        )
    return project


def visible_project_ids(session: Session, principal: Principal) -> set[str] | None:
    """The projects the caller is a member of; None means all (an admin)."""
    if principal.is_admin:
        return None
    if principal.user_id is None:
        return set()
    rows = session.scalars(
        select(MembershipRow.project_id).where(MembershipRow.user_id == principal.user_id)
    )
    return set(rows)
