"""Which unlabelled images to label next: sequential, random, or most uncertain first.

Uncertainty reads the precomputed drafts of the serving version (``1 - mean
per-pixel confidence``: least confidence averaged over the image), so a queue
request never runs the model. Images whose draft is not precomputed yet come
after the scored ones, in upload order.
"""

from __future__ import annotations

import random
from enum import StrEnum

from pydantic import BaseModel, ConfigDict
from sqlalchemy import select
from sqlalchemy.orm import Session

from prelabel.images import Image, images_by_id, uncorrected_image_ids
from prelabel.model_versions import serving_version_name
from prelabel.tables import DraftRow


class Strategy(StrEnum):
    UNCERTAINTY = "uncertainty"
    RANDOM = "random"
    SEQUENTIAL = "sequential"


class QueueItem(BaseModel):
    """An image to label next, with its uncertainty when a draft is precomputed."""

    model_config = ConfigDict(frozen=True)

    image: Image
    uncertainty: float | None
    draft_id: str | None
    model_version: str | None


def _precomputed(
    session: Session, project_id: str, version: str | None, image_ids: list[str] | None = None
) -> dict[str, tuple[str, float]]:
    """Image id -> (draft id, uncertainty) of the version's stored drafts (the newest per
    image), of every image or of ``image_ids`` only."""
    if version is None:
        return {}
    query = select(DraftRow.image_id, DraftRow.id, DraftRow.mean_confidence).where(
        DraftRow.project_id == project_id, DraftRow.model_version == version
    )
    if image_ids is not None:
        query = query.where(DraftRow.image_id.in_(image_ids))
    rows = session.execute(query.order_by(DraftRow.created_at))
    return {image_id: (draft_id, 1.0 - confidence) for image_id, draft_id, confidence in rows}


def next_images(
    session: Session, project_id: str, *, strategy: Strategy, limit: int, seed: int = 0
) -> list[QueueItem]:
    """Up to ``limit`` images without a correction, in the order ``strategy`` gives."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    version = serving_version_name(session, project_id)
    pending = uncorrected_image_ids(session, project_id)
    ranked = strategy is Strategy.UNCERTAINTY  # ranks every pending image by its stored draft
    drafts = _precomputed(session, project_id, version) if ranked else {}
    if ranked:
        pending.sort(key=lambda image_id: -drafts[image_id][1] if image_id in drafts else 1.0)
    elif strategy is Strategy.RANDOM:
        random.Random(f"{project_id}:{seed}").shuffle(pending)
    chosen = pending[:limit]
    if not ranked:  # the drafts of the images returned only
        drafts = _precomputed(session, project_id, version, chosen)
    images = images_by_id(session, project_id, chosen)
    return [
        QueueItem(
            image=images[image_id],
            uncertainty=drafts[image_id][1] if image_id in drafts else None,
            draft_id=drafts[image_id][0] if image_id in drafts else None,
            model_version=version if image_id in drafts else None,
        )
        for image_id in chosen
    ]
