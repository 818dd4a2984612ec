"""``/projects/{project}/bulk-drafts``: pre-label many images as a job, follow it, cancel it.

The service only enqueues (and cancels); a ``prelabel worker`` process (or
``prelabel prelabel-all``) drafts. Drafts jobs queued automatically after a
promotion or an upload are listed here too.
"""

from __future__ import annotations

from fastapi import APIRouter, status

from prelabel import bulk_drafts
from prelabel.bulk_drafts import BulkJob, start_bulk_drafts
from prelabel.database import transaction
from service.auth import CallerDep
from service.deps import WorkspaceDep
from service.schemas import BulkDraftsRequest

router = APIRouter(prefix="/projects/{project}/bulk-drafts", tags=["bulk drafts"])


@router.post("", status_code=status.HTTP_202_ACCEPTED)
def post_bulk_drafts(
    project: str,
    caller: CallerDep,
    workspace: WorkspaceDep,
    request: BulkDraftsRequest | None = None,
) -> BulkJob:
    """Queue drafting every image without a correction (no body), or the images listed,
    with the serving version. A queued drafts job absorbs the request and is returned."""
    body = request or BulkDraftsRequest()
    with transaction(workspace.sessions) as session:
        return start_bulk_drafts(
            session, caller.checked_project.id, image_ids=body.image_ids, actor=caller.name
        )


@router.get("")
def get_bulk_drafts(project: str, caller: CallerDep, workspace: WorkspaceDep) -> list[BulkJob]:
    """The project's drafts jobs (the automatic ones too), newest first (at most 100)."""
    with workspace.sessions() as session:
        return bulk_drafts.list_bulk_jobs(session, caller.checked_project.id)


@router.get("/{job}")
def get_bulk_job(project: str, job: str, caller: CallerDep, workspace: WorkspaceDep) -> BulkJob:
    """One job: status, progress (done/total/failed), rate, ETA, failures with reasons."""
    with workspace.sessions() as session:
        return bulk_drafts.get_bulk_job(session, caller.checked_project.id, job)


@router.post("/{job}/cancel")
def cancel_bulk_job(project: str, job: str, caller: CallerDep, workspace: WorkspaceDep) -> BulkJob:
    """Cancel a queued or running job: it stops before its next image; drafts made stay.
    A finished job answers 409."""
    with transaction(workspace.sessions) as session:
        return bulk_drafts.cancel_bulk_drafts(
            session, caller.checked_project.id, job, actor=caller.name
        )
