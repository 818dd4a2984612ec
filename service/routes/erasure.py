"""Erasure (GDPR): ``DELETE`` an image (managers) or a whole project (admins)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from prelabel.database import transaction
from prelabel.erasure import erase_image, erase_project
from prelabel.projects import get_project
from service.auth import CallerDep
from service.deps import PredictorsDep, SectionsCacheDep, WorkspaceDep

router = APIRouter(tags=["erasure"])


class ImageErasureOut(BaseModel):
    """What went, and the model versions that learnt from the image's corrections."""

    image_id: str
    corrections: int
    drafts: int
    integration_events: int
    trained_on_erased: list[str]
    """Versions now marked ``trained_on_erased``: retrain without the image."""


class ProjectErasureOut(BaseModel):
    project_id: str
    images: int
    model_versions: int
    blobs: int


@router.delete("/projects/{project}/images/{image}")
def delete_image(
    project: str,
    image: str,
    caller: CallerDep,
    workspace: WorkspaceDep,
    sections: SectionsCacheDep,
) -> ImageErasureOut:
    """Erase the image, its drafts, confidence maps, corrections with their history and the
    integration events that hold its data, from the database and the blob store."""
    with transaction(workspace.sessions) as session:
        erased = erase_image(
            session, workspace.blobs, caller.checked_project, image, actor=caller.name
        )
    sections.forget_project(caller.checked_project.id)
    return ImageErasureOut(
        image_id=erased.image_id,
        corrections=erased.corrections,
        drafts=erased.drafts,
        integration_events=erased.integration_events,
        trained_on_erased=erased.trained_on_erased,
    )


@router.delete("/projects/{project}")
def delete_project(
    project: str,
    caller: CallerDep,
    workspace: WorkspaceDep,
    predictors: PredictorsDep,
    sections: SectionsCacheDep,
) -> ProjectErasureOut:
    """Erase the project: every image, correction, draft, model version and artifact."""
    with transaction(workspace.sessions) as session:
        found = get_project(session, project)
        erased = erase_project(session, workspace.blobs, found, actor=caller.name)
    predictors.forget_project(erased.project_id)
    sections.forget_project(erased.project_id)
    return ProjectErasureOut(
        project_id=erased.project_id,
        images=erased.images,
        model_versions=erased.model_versions,
        blobs=erased.blobs,
    )
