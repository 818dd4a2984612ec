"""``/projects``: create, list and show projects."""

from __future__ import annotations

from fastapi import APIRouter, status

from prelabel.access import visible_project_ids
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
from prelabel.reviewing import ReviewSettingsChange
from prelabel.reviews import change_review_settings
from service.auth import CallerDep
from service.deps import SectionsCacheDep, WorkspaceDep
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
        training_policy=project.training_policy,
        pinned_version=project.pinned_version,
        review_required=project.review.review_required,
        review_share=project.review.review_share,
        min_reviewers=project.review.min_reviewers,
        created_at=project.created_at,
    )


@router.get("")
def get_projects(caller: CallerDep, workspace: WorkspaceDep) -> list[ProjectOut]:
    """The projects the caller is a member of (all of them for an admin)."""
    with workspace.sessions() as session:
        visible = visible_project_ids(session, caller.principal)
        projects = list_projects(session)
    return [project_out(p) for p in projects if visible is None or p.id in visible]


@router.post("", status_code=status.HTTP_201_CREATED)
def post_project(spec: ProjectSpec, caller: CallerDep, workspace: WorkspaceDep) -> ProjectOut:
    """Create a project with its label schema (admins)."""
    with transaction(workspace.sessions) as session:
        return project_out(create_project(session, spec, actor=caller.name))


@router.get("/{project}")
def get_one_project(project: str, caller: CallerDep) -> ProjectOut:
    """One project, by id or name."""
    return project_out(caller.checked_project)


@router.patch("/{project}")
def patch_project(
    project: str,
    change: ReviewSettingsChange,
    caller: CallerDep,
    workspace: WorkspaceDep,
    sections: SectionsCacheDep,
) -> ProjectOut:
    """Change the project's review settings (managers; recorded in the audit trail).

    ``review_required`` (default off), ``review_share`` (0 to 1: the share of new
    corrections drawn for review), ``min_reviewers`` (distinct approvals needed).
    Turning review on draws the current unreviewed corrections as if they were new.
    """
    with transaction(workspace.sessions) as session:
        found = get_project(session, caller.checked_project.id)
        changed = change_review_settings(session, found, change, actor=caller.name)
    sections.forget_project(changed.id)  # the metrics' review section follows at once
    return project_out(changed)


@router.get("/{project}/training-policy")
def get_training_policy(project: str, caller: CallerDep) -> TrainingPolicy:
    """When the project retrains automatically, how, and the promotion margin."""
    return caller.checked_project.training_policy


@router.put("/{project}/training-policy")
def put_training_policy(
    project: str, policy: TrainingPolicy, caller: CallerDep, workspace: WorkspaceDep
) -> TrainingPolicy:
    """Replace the project's training policy (recorded in the audit trail)."""
    with transaction(workspace.sessions) as session:
        found = caller.checked_project
        return set_training_policy(session, found.id, policy, actor=caller.name).training_policy
