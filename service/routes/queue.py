"""``GET /projects/{project}/queue``: the next images to label."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from prelabel.ordering import Strategy, next_images
from service.auth import CallerDep
from service.deps import WorkspaceDep

router = APIRouter(prefix="/projects/{project}", tags=["queue"])


class QueueEntry(BaseModel):
    id: str
    filename: str
    width: int
    height: int
    uncertainty: float | None
    draft_id: str | None
    model_version: str | None


@router.get("/queue")
def get_queue(
    project: str,
    caller: CallerDep,
    workspace: WorkspaceDep,
    strategy: Strategy = Strategy.UNCERTAINTY,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 20,
    seed: int = 0,
) -> list[QueueEntry]:
    """Unlabelled images in labeling order.

    ``uncertainty``: most uncertain precomputed draft first (1 - mean confidence);
    ``random``: a shuffle fixed by ``seed``; ``sequential``: upload order.
    """
    with workspace.sessions() as session:
        items = next_images(
            session, caller.checked_project.id, strategy=strategy, limit=limit, seed=seed
        )
    return [
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
    ]
