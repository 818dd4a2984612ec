"""``/projects``: create, list and show projects."""

from __future__ import annotations

from fastapi import APIRouter, status

from prelabel.audit import list_events, record_event
from prelabel.database import transaction
from prelabel.policy import TrainingPolicy
from prelabel.projects import (
    Project,
    ProjectSpec,
    create_project,
    get_project,
    list_projects,
    set_training_policy,
)
from service.deps import WorkspaceDep
from service.schemas import AuditEventOut, ProjectOut

router = APIRouter(prefix="/projects", tags=["projects"])


def project_out(project: Project) -> ProjectOut:
    """The wire form of a project."""
    schema = project.label_schema
    return ProjectOut(
        id=project.id,
        name=project.name,
        classes=schema.classes,
        ignore_index=schema.ignore_index,
        background_id=schema.background,
        acceptance_threshold=project.acceptance_threshold,
        training_policy=project.training_policy,
        pinned_version=project.pinned_version,
        created_at=project.created_at,
    )


@router.get("")
def get_projects(workspace: WorkspaceDep) -> list[ProjectOut]:
    """All projects."""
    with workspace.sessions() as session:
        return [project_out(p) for p in list_projects(session)]


@router.post("", status_code=status.HTTP_201_CREATED)
def post_project(spec: ProjectSpec, workspace: WorkspaceDep) -> ProjectOut:
    """Create a project with its label schema."""
    with transaction(workspace.sessions) as session:
        return project_out(create_project(session, spec))


@router.get("/{project}")
def get_one_project(project: str, workspace: WorkspaceDep) -> ProjectOut:
    """One project, by id or name."""
    with workspace.sessions() as session:
        return project_out(get_project(session, project))


@router.get("/{project}/training-policy")
def get_training_policy(project: str, workspace: WorkspaceDep) -> TrainingPolicy:
    """When the project retrains automatically, how, and the promotion margin."""
    with workspace.sessions() as session:
        return get_project(session, project).training_policy


@router.put("/{project}/training-policy")
def put_training_policy(
    project: str, policy: TrainingPolicy, workspace: WorkspaceDep
) -> TrainingPolicy:
    """Replace the project's training policy (recorded in the audit trail)."""
    with transaction(workspace.sessions) as session:
        found = get_project(session, project)
        record_event(
            session,
            found.id,
            actor="api",
            action="set_training_policy",
            details=policy.model_dump(mode="json"),
        )
        return set_training_policy(session, found.id, policy).training_policy


@router.get("/{project}/audit")
def get_audit(project: str, workspace: WorkspaceDep) -> list[AuditEventOut]:
    """The project's audit trail, newest first."""
    with workspace.sessions() as session:
        return list_events(session, get_project(session, project).id)
