"""``GET /projects/{project}/queue``: the next images to label."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlalchemy.orm import Session

from prelabel.access import Permission, may
from prelabel.errors import Forbidden
from prelabel.images import get_image
from prelabel.ordering import Strategy, next_images
from prelabel.reviews import rejected_corrections
from service.admission import COMPUTED_READ_TURN
from service.auth import CallerDep
from service.deps import WorkspaceDep

router = APIRouter(prefix="/projects/{project}", tags=["queue"])


class Rejection(BaseModel):
    """Why a correction came back: the rejected correction and the reviewer's word."""

    correction_id: str
    reviewer: str
    comment: str
    rejected_at: datetime


class QueueEntry(BaseModel):
    id: str
    filename: str
    width: int
    height: int
    uncertainty: float | None
    draft_id: str | None
    model_version: str | None
    rejection: Rejection | None = None
    """Set for a correction a reviewer sent back (``assignee`` queues list them first)."""


@router.get("/queue", dependencies=[COMPUTED_READ_TURN])
def get_queue(
    project: str,
    caller: CallerDep,
    workspace: WorkspaceDep,
    strategy: Strategy = Strategy.UNCERTAINTY,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 20,
    seed: int = 0,
    assignee: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=200,
            description="'me' (or a user name: needs read_all_corrections): that person's "
            "rejected corrections come first, with the reviewer's comment",
        ),
    ] = None,
) -> list[QueueEntry]:
    """Unlabelled images in labeling order, after the assignee's rejected corrections.

    ``uncertainty``: most uncertain precomputed draft first (1 - mean confidence);
    ``random``: a shuffle fixed by ``seed``; ``sequential``: upload order.
    """
    found = caller.checked_project
    with workspace.sessions() as session:
        returned: list[QueueEntry] = []
        if assignee is not None:
            person = caller.name if assignee == "me" else assignee
            if person != caller.name and not may(
                session, caller.principal, found.id, Permission.READ_ALL_CORRECTIONS
            ):
                raise Forbidden(
                    f"the queue of {person!r} needs the read_all_corrections permission"
                )
            returned = _rejected_entries(session, found.id, person)[:limit]
        items = next_images(
            session, found.id, strategy=strategy, limit=max(limit - len(returned), 1), seed=seed
        )
    return (
        returned
        + [
            QueueEntry(
                id=item.image.id,
                filename=item.image.filename,
                width=item.image.width,
                height=item.image.height,
                uncertainty=item.uncertainty,
                draft_id=item.draft_id,
                model_version=item.model_version,
            )
            for item in items
        ][: limit - len(returned)]
    )


def _rejected_entries(session: Session, project_id: str, annotator: str) -> list[QueueEntry]:
    entries: list[QueueEntry] = []
    for rejected in rejected_corrections(session, project_id, annotator):
        image = get_image(session, project_id, rejected.correction.image_id)
        entries.append(
            QueueEntry(
                id=image.id,
                filename=image.filename,
                width=image.width,
                height=image.height,
                uncertainty=None,
                draft_id=rejected.correction.draft_id,
                model_version=rejected.correction.model_version,
                rejection=Rejection(
                    correction_id=rejected.correction.id,
                    reviewer=rejected.rejection.reviewer,
                    comment=rejected.rejection.comment,
                    rejected_at=rejected.rejection.created_at,
                ),
            )
        )
    return entries
