"""``/projects``: create, list and show projects."""

from __future__ import annotations

from fastapi import APIRouter, status

from prelabel.database import transaction
from prelabel.projects import Project, ProjectSpec, create_project, get_project, list_projects
from service.deps import WorkspaceDep
from service.schemas import ProjectOut

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
