"""Drafts: the model's proposed mask for an image, stored exactly as it was served."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select
from sqlalchemy.orm import Session

from prelabel.blobs import BlobStore
from prelabel.codecs import (
    decode_confidence_png,
    decode_index_png,
    encode_confidence_png,
    encode_schema_mask,
)
from prelabel.errors import DraftNotFound
from prelabel.images import Image
from prelabel.schema import LabelSchema
from prelabel.tables import DraftRow, new_id

logger = logging.getLogger(__name__)


class Draft(BaseModel):
    """A stored draft; ``model_version`` is None for an empty draft (no model yet)."""

    model_config = ConfigDict(frozen=True)

    id: str
    project_id: str
    image_id: str
    model_version: str | None
    mask_key: str
    confidence_key: str
    mean_confidence: float
    latency_ms: float
    created_at: datetime


def _to_draft(row: DraftRow) -> Draft:
    return Draft.model_validate(row, from_attributes=True)


def empty_draft(
    schema: LabelSchema, height: int, width: int
) -> tuple[npt.NDArray[np.integer], npt.NDArray[np.float32]]:
    """The draft of a project without a model: all background, zero confidence.

    Returns:
        ``(mask, confidence)``: (H, W) of ``schema.mask_dtype`` filled with the
        background class, and (H, W) float32 zeros.
    """
    mask = np.full((height, width), schema.background, dtype=schema.mask_dtype)
    return mask, np.zeros((height, width), dtype=np.float32)


def store_draft(
    session: Session,
    blobs: BlobStore,
    *,
    image: Image,
    schema: LabelSchema,
    mask: npt.NDArray[np.integer],
    confidence: npt.NDArray[np.float32],
    model_version: str | None,
    latency_ms: float = 0.0,
) -> Draft:
    """Store a draft's mask (index PNG) and confidence (8-bit PNG) and record it.

    Both PNGs are encoded and stored before the draft's row is written: on SQLite the
    first write statement takes the database's one write lock, held until commit, so the
    lock is not held while they are encoded and fsynced (a failed transaction's caller
    removes the blobs, ``prelabel.blobs.undo_puts_on_error``). The mask is encoded and
    stored on a second thread meanwhile (Pillow's encoder and the fsyncs release the GIL):
    a person waits for on-demand drafts.
    """
    if mask.shape != (image.height, image.width) or confidence.shape != mask.shape:
        raise ValueError(
            f"draft shape {mask.shape}/{confidence.shape} != image {(image.height, image.width)}"
        )
    draft_id = new_id()
    prefix = f"projects/{image.project_id}/drafts/{draft_id}"
    mask_key, confidence_key = f"{prefix}.mask.png", f"{prefix}.confidence.png"
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="draft-mask") as beside:
        mask_stored = beside.submit(lambda: blobs.put(mask_key, encode_schema_mask(mask, schema)))
        blobs.put(confidence_key, encode_confidence_png(confidence))
        mask_stored.result()
    row = DraftRow(
        id=draft_id,
        project_id=image.project_id,
        image_id=image.id,
        model_version=model_version,
        mask_key=mask_key,
        confidence_key=confidence_key,
        mean_confidence=float(confidence.mean()) if confidence.size else 0.0,
        latency_ms=latency_ms,
    )
    session.add(row)
    session.flush()
    logger.info("stored draft %s for image %s (model_version=%s)", row.id, image.id, model_version)
    return _to_draft(row)


def get_draft(session: Session, project_id: str, draft_id: str) -> Draft:
    """The draft ``draft_id`` of the project; raises DraftNotFound."""
    row = session.get(DraftRow, draft_id)
    if row is None or row.project_id != project_id:
        raise DraftNotFound(draft_id)
    return _to_draft(row)


def latest_draft(
    session: Session, image: Image, *, model_version: str | None, any_version: bool = False
) -> Draft | None:
    """The newest draft of ``image`` made by ``model_version`` (or by any version)."""
    query = select(DraftRow).where(
        DraftRow.project_id == image.project_id, DraftRow.image_id == image.id
    )
    if not any_version:
        query = query.where(
            DraftRow.model_version.is_(None)
            if model_version is None
            else DraftRow.model_version == model_version
        )
    row = session.scalars(query.order_by(DraftRow.created_at.desc()).limit(1)).first()
    return _to_draft(row) if row else None


def drafted_image_ids(session: Session, project_id: str, *, model_version: str) -> set[str]:
    """The ids of the project's images that have a draft by ``model_version`` (one query)."""
    query = (
        select(DraftRow.image_id)
        .where(DraftRow.project_id == project_id, DraftRow.model_version == model_version)
        .distinct()
    )
    return set(session.scalars(query))


def load_draft_mask(blobs: BlobStore, draft: Draft) -> npt.NDArray[np.integer]:
    """The draft's (H, W) index mask."""
    return decode_index_png(blobs.get(draft.mask_key), max_pixels=2**31)


def load_draft_confidence(blobs: BlobStore, draft: Draft) -> npt.NDArray[np.float32]:
    """The draft's (H, W) per-pixel confidence in [0, 1]."""
    return decode_confidence_png(blobs.get(draft.confidence_key))
