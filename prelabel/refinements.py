"""Refining an image's draft from clicks: the one rule every path calls, and its records.

:func:`refine_image` is how a refinement happens, whether it comes from
``POST …/refine``, a Label Studio smart keypoint or a CVAT interactor: it checks
the class and the clicks, refines the base mask (the draft, the current correction,
or a named draft) and records the call with the draft it started from. A later
correction of the image counts the clicks recorded since the image's previous
correction (:func:`clicks_since`).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from enum import StrEnum

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select
from sqlalchemy.orm import Session

from prelabel.audit import AuditAction, record_audit
from prelabel.blobs import BlobStore
from prelabel.codecs import decode_index_png
from prelabel.drafts import Draft, get_draft, load_draft_mask
from prelabel.errors import CorrectionNotFound, SchemaError, ValidationFailed
from prelabel.images import Image, load_pixels
from prelabel.projects import Project
from prelabel.refinement import Clicks, RefineMethod, Refiner, refine_class
from prelabel.schema import LabelSchema
from prelabel.tables import CorrectionRow, RefinementRow

logger = logging.getLogger(__name__)


class BaseKind(StrEnum):
    """What a refinement starts from."""

    DRAFT = "draft"
    CORRECTION = "correction"
    DRAFT_ID = "draft_id"


class StartingMask(BaseModel):
    """The mask a refinement starts from and the draft behind it.

    Attributes:
        kind: The kind of base.
        draft: The draft itself (``draft``, ``draft_id``) or the one the current
            correction started from (``correction``; None if it had none).
        correction_key: The blob key of the correction's mask, for ``correction``.
    """

    model_config = ConfigDict(frozen=True)

    kind: BaseKind
    draft: Draft | None
    correction_key: str | None = None


class Refinement(BaseModel):
    """A recorded refinement call (the refined mask itself is not stored)."""

    model_config = ConfigDict(frozen=True)

    id: str
    image_id: str
    draft_id: str | None
    model_version: str | None
    class_id: int
    clicks: Clicks
    base: BaseKind
    method: RefineMethod
    source: str
    latency_ms: float
    created_at: datetime


def resolve_class(schema: LabelSchema, *, class_id: int | None, label: str | None) -> int:
    """The class a refinement redraws, named by id or by name (or translation).

    Raises:
        ValidationFailed: neither or both given, or the background class.
        SchemaError: no class has this id or name.
    """
    if class_id is not None and label is not None:
        raise ValidationFailed(f"give 'class_id' or 'label', not both ({class_id}, {label!r})")
    if class_id is not None:
        found = schema.class_by_id(class_id)
    elif label is not None:
        found = schema.class_by_name(label)
    else:
        raise ValidationFailed("give the class to refine: 'class_id' or 'label'")
    if found.id == schema.background:
        raise ValidationFailed(
            f"class {found.id} ({found.name!r}) is the background; refine a foreground class"
        )
    return found.id


def starting_mask(
    session: Session, project: Project, image: Image, base: str, current: Draft | None
) -> StartingMask:
    """Resolve ``base``: ``"draft"`` (``current``), ``"correction"`` or a draft id of the image.

    Raises:
        CorrectionNotFound: ``correction`` for an image without a current correction.
        DraftNotFound: an unknown draft id.
        ValidationFailed: the draft belongs to another image.
    """
    if base == BaseKind.DRAFT:
        return StartingMask(kind=BaseKind.DRAFT, draft=current)
    if base == BaseKind.CORRECTION:
        row = session.scalars(
            select(CorrectionRow).where(
                CorrectionRow.image_id == image.id, CorrectionRow.is_current.is_(True)
            )
        ).first()
        if row is None:
            raise CorrectionNotFound(image.id)
        draft = get_draft(session, project.id, row.draft_id) if row.draft_id else None
        return StartingMask(kind=BaseKind.CORRECTION, draft=draft, correction_key=row.mask_key)
    draft = get_draft(session, project.id, base)
    if draft.image_id != image.id:
        raise ValidationFailed(
            f"draft {base!r} belongs to image {draft.image_id!r}, not to image {image.id!r}"
        )
    return StartingMask(kind=BaseKind.DRAFT_ID, draft=draft)


def _base_mask(
    blobs: BlobStore, schema: LabelSchema, image: Image, start: StartingMask
) -> npt.NDArray[np.integer]:
    if start.correction_key is not None:
        return decode_index_png(blobs.get(start.correction_key), max_pixels=2**31)
    if start.draft is not None:
        return load_draft_mask(blobs, start.draft)
    return np.full((image.height, image.width), schema.background, dtype=schema.mask_dtype)


def refine_image(
    session: Session,
    blobs: BlobStore,
    *,
    project: Project,
    image: Image,
    class_id: int,
    clicks: Clicks,
    start: StartingMask,
    source: str,
    actor: str,
    refiner: Refiner = refine_class,
) -> tuple[npt.NDArray[np.integer], Refinement]:
    """Refine one class of an image from clicks and record the call, in the caller's transaction.

    Args:
        class_id: A foreground class of the project (see :func:`resolve_class`).
        clicks: Every click of the interaction, pixel coordinates.
        start: The base mask (see :func:`starting_mask`).
        source: The path it came by: ``api``, ``labelstudio``, ``cvat``.
        actor: Who asked (audited).
        refiner: The method: GrabCut (the training-free fallback) or the serving
            version's click model (``models.click_model.ClickPredictor``).

    Returns:
        ``(mask, refinement)``: the whole refined ``(H, W)`` index mask
        (``schema.mask_dtype``) and the recorded call.

    Raises:
        SchemaError: ``class_id`` is not a class of the project.
        ValidationFailed: the background class, or a click outside the image.
    """
    schema = project.label_schema
    if class_id not in schema.class_ids:
        raise SchemaError(f"class {class_id} is not in the schema; classes: {schema.class_ids}")
    if class_id == schema.background:
        raise ValidationFailed(f"class {class_id} is the background; refine a foreground class")
    clicks.check(image.height, image.width)
    started = time.perf_counter()
    refined = refiner(
        load_pixels(blobs, image),
        _base_mask(blobs, schema, image, start),
        class_id,
        clicks,
        background=schema.background,
    )
    latency_ms = (time.perf_counter() - started) * 1000.0
    draft = start.draft
    row = RefinementRow(
        project_id=project.id,
        image_id=image.id,
        draft_id=draft.id if draft else None,
        model_version=draft.model_version if draft else None,
        class_id=class_id,
        positive=[list(p) for p in clicks.positive],
        negative=[list(p) for p in clicks.negative],
        box=list(clicks.box) if clicks.box else None,
        base=start.kind.value,
        method=refined.method.value,
        source=source,
        latency_ms=latency_ms,
    )
    session.add(row)
    session.flush()
    record_audit(
        session,
        project.id,
        actor=actor,
        action=AuditAction.DRAFT_REFINED,
        image_id=image.id,
        details={"refinement_id": row.id, "draft_id": row.draft_id},
    )
    logger.info(
        "refinement %s of image %s class %d: %d clicks from %s (draft %s) by %s in %.0f ms",
        row.id,
        image.id,
        class_id,
        clicks.count,
        start.kind.value,
        row.draft_id,
        refined.method.value,
        latency_ms,
    )
    return refined.mask, _to_refinement(row)


def _to_refinement(row: RefinementRow) -> Refinement:
    return Refinement(
        id=row.id,
        image_id=row.image_id,
        draft_id=row.draft_id,
        model_version=row.model_version,
        class_id=row.class_id,
        clicks=Clicks(
            positive=[tuple(p) for p in row.positive],
            negative=[tuple(p) for p in row.negative],
            box=tuple(row.box) if row.box else None,
        ),
        base=BaseKind(row.base),
        method=RefineMethod(row.method),
        source=row.source,
        latency_ms=row.latency_ms,
        created_at=row.created_at,
    )


def clicks_since(session: Session, image: Image, since: datetime | None) -> int:
    """The distinct clicks on ``image`` recorded after ``since`` (all, for None).

    A refinement call carries every click of its interaction, so a click sent
    again by the next call is counted once: a click is its class, sign and pixel.
    Boxes are not clicks.
    """
    query = select(RefinementRow).where(
        RefinementRow.project_id == image.project_id, RefinementRow.image_id == image.id
    )
    if since is not None:
        query = query.where(RefinementRow.created_at > since)
    seen: set[tuple[int, bool, int, int]] = set()
    for row in session.scalars(query):
        seen.update((row.class_id, True, int(x), int(y)) for x, y in row.positive)
        seen.update((row.class_id, False, int(x), int(y)) for x, y in row.negative)
    return len(seen)


def image_refinements(session: Session, image: Image) -> list[Refinement]:
    """Every refinement call on ``image``, oldest first."""
    rows = session.scalars(
        select(RefinementRow)
        .where(RefinementRow.project_id == image.project_id, RefinementRow.image_id == image.id)
        .order_by(RefinementRow.created_at, RefinementRow.id)
    )
    return [_to_refinement(row) for row in rows]
