"""Images of a project: upload (validated, stored as sent) and lookup."""

from __future__ import annotations

import hashlib
import logging
import unicodedata
from datetime import datetime
from pathlib import PurePath

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict
from sqlalchemy import exists, select
from sqlalchemy.orm import InstrumentedAttribute, Session
from sqlalchemy.sql.expression import ColumnElement, Exists

from prelabel.audit import AuditAction, record_audit
from prelabel.blobs import BlobStore
from prelabel.codecs import decode_image
from prelabel.errors import ImageNotFound, ValidationFailed
from prelabel.tables import CorrectionRow, ImageRow
from prelabel.workspace import Workspace

logger = logging.getLogger(__name__)


class Image(BaseModel):
    """An image as stored; ``has_correction`` says whether a current correction exists."""

    model_config = ConfigDict(frozen=True)

    id: str
    project_id: str
    filename: str
    width: int
    height: int
    channels: int
    blob_key: str
    has_correction: bool = False
    created_at: datetime


def _to_image(row: ImageRow, has_correction: bool = False) -> Image:
    return Image(
        id=row.id,
        project_id=row.project_id,
        filename=row.filename,
        width=row.width,
        height=row.height,
        channels=row.channels,
        blob_key=row.blob_key,
        has_correction=has_correction,
        created_at=row.created_at,
    )


MAX_FILENAME_BYTES = 255
"""The longest file name kept (UTF-8 bytes), as on common filesystems."""


def check_filename(filename: str | None) -> str:
    """The name an image is stored under: the base name of ``filename``.

    Folders are dropped (``scans/a.png`` is ``a.png``, as a folder upload sends it);
    a ``..`` component, control characters (NUL, newlines) and invisible format
    characters (right-to-left overrides that disguise an extension) are refused.

    Raises:
        ValidationFailed: Naming what is wrong with the name.
    """
    if not filename:
        return "image"
    parts = filename.replace("\\", "/").split("/")
    if ".." in parts:
        raise ValidationFailed(f"file name {filename[:80]!r} contains a '..' path component")
    bad = sorted({f"U+{ord(c):04X}" for c in filename if unicodedata.category(c) in {"Cc", "Cf"}})
    if bad:
        raise ValidationFailed(
            f"file name {filename[:80]!r} contains control or format characters {bad}"
        )
    if len(filename.encode()) > MAX_FILENAME_BYTES:
        raise ValidationFailed(
            f"file name is {len(filename.encode())} bytes, over {MAX_FILENAME_BYTES}"
        )
    return PurePath(parts[-1]).name or "image"


def add_image(
    session: Session,
    blobs: BlobStore,
    *,
    project_id: str,
    filename: str,
    data: bytes,
    max_pixels: int,
    actor: str,
    pixels: npt.NDArray[np.uint8] | None = None,
) -> Image:
    """Validate and store one image (audited as uploaded by ``actor``).

    The bytes are decoded first (raising CodecError / ImageTooLarge), so nothing
    is stored for bad input; pass ``pixels`` when the caller already decoded them.
    The original bytes are kept, not a re-encoding.
    """
    if pixels is None:
        pixels = decode_image(data, max_pixels=max_pixels)
    name = check_filename(filename)
    row = ImageRow(
        project_id=project_id,
        filename=name,
        width=int(pixels.shape[1]),
        height=int(pixels.shape[0]),
        channels=1 if pixels.ndim == 2 else int(pixels.shape[2]),
        sha256=hashlib.sha256(data).hexdigest(),
        blob_key="",
    )
    session.add(row)
    session.flush()
    row.blob_key = f"projects/{project_id}/images/{row.id}"
    blobs.put(row.blob_key, data)
    record_audit(
        session, project_id, actor=actor, action=AuditAction.IMAGE_UPLOADED, image_id=row.id
    )
    logger.info(
        "stored image %s (%s, %dx%d) in project %s", row.id, name, row.width, row.height, project_id
    )
    return _to_image(row)


def _current_correction_exists(
    image_id: ColumnElement[str] | InstrumentedAttribute[str] | str,
) -> Exists:
    return exists().where(CorrectionRow.image_id == image_id, CorrectionRow.is_current.is_(True))


def _corrected_in(project_id: str) -> Exists:
    # Naming the project lets the lookup use the (project_id, image_id) index of
    # corrections; on image_id alone SQLite scans them once per image (quadratic).
    return exists().where(
        CorrectionRow.project_id == project_id,
        CorrectionRow.image_id == ImageRow.id,
        CorrectionRow.is_current.is_(True),
    )


def list_images(session: Session, project_id: str) -> list[Image]:
    """The project's images, oldest first, with ``has_correction``."""
    rows = session.execute(
        select(ImageRow, _corrected_in(project_id).label("has_correction"))
        .where(ImageRow.project_id == project_id)
        .order_by(ImageRow.created_at, ImageRow.id)
    )
    return [_to_image(row, bool(flag)) for row, flag in rows]


def uncorrected_image_ids(session: Session, project_id: str) -> list[str]:
    """The ids of the project's images without a current correction, oldest first.

    Ids only: a queue ranks thousands of them and builds :class:`Image` for the few it returns.
    """
    return list(
        session.scalars(
            select(ImageRow.id)
            .where(ImageRow.project_id == project_id, ~_corrected_in(project_id))
            .order_by(ImageRow.created_at, ImageRow.id)
        )
    )


def images_by_id(session: Session, project_id: str, image_ids: list[str]) -> dict[str, Image]:
    """The project's images among ``image_ids``, by id, with ``has_correction``."""
    if not image_ids:
        return {}
    rows = session.execute(
        select(ImageRow, _corrected_in(project_id).label("has_correction")).where(
            ImageRow.project_id == project_id, ImageRow.id.in_(image_ids)
        )
    )
    return {row.id: _to_image(row, bool(flag)) for row, flag in rows}


def get_image(session: Session, project_id: str, image_id: str) -> Image:
    """The image ``image_id`` of the project; raises ImageNotFound (also for another project's)."""
    row = session.get(ImageRow, image_id)
    if row is None or row.project_id != project_id:
        raise ImageNotFound(image_id)
    flag = session.scalar(select(_current_correction_exists(image_id)))
    return _to_image(row, bool(flag))


def read_image_file(
    workspace: Workspace, project_id: str, image_id: str, *, actor: str
) -> tuple[Image, bytes]:
    """The image and its bytes as uploaded; the read is audited (deferred)."""
    with workspace.sessions() as session:
        image = get_image(session, project_id, image_id)
    data = workspace.blobs.get(image.blob_key)
    workspace.deferred.audit(
        project_id, actor=actor, action=AuditAction.IMAGE_READ, image_id=image.id
    )
    return image, data


def load_pixels(blobs: BlobStore, image: Image) -> npt.NDArray[np.uint8]:
    """The image's pixels: (H, W) grayscale or (H, W, 3) RGB, uint8."""
    return decode_image(blobs.get(image.blob_key), max_pixels=image.width * image.height)


def find_image_by_sha256(session: Session, project_id: str, sha256: str) -> Image | None:
    """The project's oldest image whose stored bytes have this sha256, if any.

    Lets an integration that receives the same file again (a task re-predicted,
    a webhook for a task already seen) reuse the image and its drafts.
    """
    row = session.scalars(
        select(ImageRow)
        .where(ImageRow.project_id == project_id, ImageRow.sha256 == sha256)
        .order_by(ImageRow.created_at, ImageRow.id)
        .limit(1)
    ).first()
    if row is None:
        return None
    flag = session.scalar(select(_current_correction_exists(row.id)))
    return _to_image(row, bool(flag))
