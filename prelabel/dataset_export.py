"""Dataset export for ML staff: a project's current corrections as one zip.

Two layouts, both with ``manifest.json`` (project, filter, and per image its
ids, annotator, model version, time and acceptance)::

    png:   images/<stem>.<ext>   the image as uploaded (PNG, JPEG; other formats become PNG)
           masks/<stem>.png      index PNG, one class id per pixel, the schema's palette
           labels.yaml           the label schema
    coco:  images/<stem>.<ext>   as above
           annotations.json      COCO: one annotation per (image, class present), RLE segmentation

The png layout is exactly the dataset folder that ``prelabel import`` reads
(:mod:`prelabel.datasets.folder`), so an unzipped export imports into a new
project with identical masks. Only images with a selected correction are
exported. Stems come from the uploaded file names; a stem that repeats
(case-insensitively) gets ``-<image id>`` appended.

The zip is written entry by entry to any binary stream, so at most one image
and its mask are in memory at a time (plus the small COCO annotation list).
"""

from __future__ import annotations

import logging
import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import PurePath
from typing import IO

import numpy as np
import numpy.typing as npt
from pycocotools import mask as coco_mask
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator
from sqlalchemy.orm import Session

from prelabel.audit import AuditAction, record_audit
from prelabel.codecs import (
    CocoRle,
    decode_image,
    encode_image_png,
    encode_schema_mask,
    mask_to_rles,
)
from prelabel.corrections import Correction, current_corrections, load_correction_mask
from prelabel.database import transaction
from prelabel.datasets.folder import (
    IMAGES_DIR,
    MASK_SUFFIX,
    MASKS_DIR,
    SCHEMA_FILE,
    schema_to_yaml,
)
from prelabel.errors import ImageNotFound
from prelabel.images import Image, list_images
from prelabel.projects import Project, get_project
from prelabel.reviewing import ReviewStatus
from prelabel.schema import LabelSchema
from prelabel.tables import as_utc, check_window
from prelabel.workspace import Workspace

logger = logging.getLogger(__name__)

NO_MODEL_VERSION = "none"
"""The ``model_version`` filter value for corrections made without a model's draft."""

MANIFEST_FILE = "manifest.json"
COCO_FILE = "annotations.json"

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8\xff"
_UNSAFE_IN_NAME = re.compile(r'[\x00-\x1f\x7f\\/:*?"<>|]')


class ExportFormat(StrEnum):
    """The layout of an export zip (see the module docstring)."""

    PNG = "png"
    COCO = "coco"


class ExportFilter(BaseModel):
    """Which of a project's current corrections an export holds.

    Attributes:
        approved_only: In a project that requires review, only *QA-approved*
            corrections (review status ``approved``). In a project without
            review, only *draft-accepted* corrections: their draft needed at most
            the project's acceptance threshold (default 1%) of pixels changed.
        model_version: Only corrections whose draft came from this model
            version. ``"none"`` selects corrections made without a model: from
            an empty draft, or with no draft at all (imported masks).
        since: Only corrections created at or after this time.
        until: Only corrections created before this time.

    Times without a UTC offset are read as UTC; an empty string means "no
    filter" for ``model_version``, ``since`` and ``until``.

    Raises:
        ValueError: (a pydantic ``ValidationError``) for a time that is not ISO
            8601, or ``since`` not before ``until``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    approved_only: bool = False
    model_version: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    @field_validator("model_version", "since", "until", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("since", "until")
    @classmethod
    def _to_utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else as_utc(value)

    @model_validator(mode="after")
    def _check_window(self) -> ExportFilter:
        check_window(self.since, self.until)
        return self

    def matches(self, correction: Correction, *, review_required: bool = False) -> bool:
        """Whether ``correction`` passes every set criterion (``review_required``: the
        project's setting, which says what ``approved_only`` means)."""
        if self.approved_only and not is_approved(correction, review_required=review_required):
            return False
        if self.model_version is not None:
            wanted = None if self.model_version == NO_MODEL_VERSION else self.model_version
            if correction.model_version != wanted:
                return False
        if self.since is not None and correction.created_at < self.since:
            return False
        return self.until is None or correction.created_at < self.until


def parse_export_filter(
    *,
    approved_only: bool = False,
    model_version: str | None = None,
    since: str | None = None,
    until: str | None = None,
) -> ExportFilter:
    """Build an :class:`ExportFilter` from command-line or query-string values.

    Args:
        approved_only: See :class:`ExportFilter`.
        model_version: A model version, ``"none"``, or None/empty for any.
        since: ISO 8601 time (a date alone means midnight), None or empty for no bound.
        until: Likewise.

    Returns:
        The filter, times in UTC.

    Raises:
        ValueError: A time that is not ISO 8601, or ``since`` not before
            ``until``; the message names the field.
    """
    try:
        return ExportFilter.model_validate(
            {
                "approved_only": approved_only,
                "model_version": model_version,
                "since": since,
                "until": until,
            }
        )
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'filter'}: {error['msg']}"
            for error in exc.errors()
        )
        raise ValueError(f"invalid export filter: {problems}") from exc


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote: ``annotations`` counts COCO annotations (0 for png)."""

    project_id: str
    project_name: str
    format: ExportFormat
    images: int
    annotations: int


class ManifestEntry(BaseModel):
    """One exported image in ``manifest.json``; file paths are relative to the zip root."""

    model_config = ConfigDict(frozen=True)

    image_id: str
    correction_id: str
    image_file: str
    mask_file: str | None
    original_filename: str
    reencoded: bool
    annotator: str
    source: str
    model_version: str | None
    created_at: datetime
    accepted: bool | None
    review_status: ReviewStatus = ReviewStatus.NOT_REQUIRED


class ApprovedMeaning(StrEnum):
    """What ``approved_only`` meant for an export (stated in its manifest)."""

    QA_APPROVED = "qa_approved"
    """The project requires review: approved by its reviewers."""
    DRAFT_ACCEPTED = "draft_accepted"
    """No review: the draft needed at most the acceptance threshold of changes."""


def approved_meaning(project: Project) -> ApprovedMeaning:
    """What ``approved_only`` means for ``project`` now."""
    if project.review.review_required:
        return ApprovedMeaning.QA_APPROVED
    return ApprovedMeaning.DRAFT_ACCEPTED


class ExportManifest(BaseModel):
    """The content of ``manifest.json``."""

    project_id: str
    project_name: str
    format: ExportFormat
    filter: ExportFilter | None
    approved_means: ApprovedMeaning | None = None
    """What ``approved_only`` meant for this project at export time."""
    exported_at: datetime
    images: list[ManifestEntry]


class CocoInfo(BaseModel):
    """The COCO ``info`` block."""

    description: str
    version: str = "1.0"
    date_created: datetime


class CocoImage(BaseModel):
    """A COCO ``images`` entry; ``file_name`` is relative to ``images/``."""

    id: int
    file_name: str
    width: int
    height: int
    prelabel_image_id: str


class CocoCategory(BaseModel):
    """A COCO ``categories`` entry: one schema class, its id the class id."""

    id: int
    name: str
    color: str
    translations: dict[str, str]


class CocoAnnotation(BaseModel):
    """The pixels of one class in one image, as compressed RLE."""

    id: int
    image_id: int
    category_id: int
    segmentation: CocoRle
    area: int
    bbox: list[float]
    iscrowd: int = 0


class CocoDataset(BaseModel):
    """The content of ``annotations.json``."""

    info: CocoInfo
    images: list[CocoImage]
    categories: list[CocoCategory]
    annotations: list[CocoAnnotation]


@dataclass(frozen=True)
class _Item:
    """A correction to export, with its image and the stem it gets in the zip."""

    correction: Correction
    image: Image
    stem: str


def is_approved(correction: Correction, *, review_required: bool = False) -> bool:
    """Whether a correction counts as approved (see ExportFilter): QA-approved when the
    project requires review, else its draft was accepted."""
    if review_required:
        return correction.review_status is ReviewStatus.APPROVED
    return correction.metrics is not None and correction.metrics.accepted


def select_corrections(
    session: Session, project: Project, export_filter: ExportFilter
) -> list[Correction]:
    """The project's current corrections that pass ``export_filter``, oldest first.

    Args:
        session: An open SQLAlchemy session.
        project: The project.
        export_filter: The criteria.

    Returns:
        The matching current (not superseded) corrections.
    """
    review_required = project.review.review_required
    return [
        c
        for c in current_corrections(session, project.id)
        if export_filter.matches(c, review_required=review_required)
    ]


def _safe_stem(filename: str) -> str:
    """The file name's stem, without characters that break paths or hide the file."""
    stem = _UNSAFE_IN_NAME.sub("_", PurePath(filename).stem).strip().lstrip(".")
    return stem or "image"


def _unique_stem(stem: str, image_id: str, taken: set[str]) -> str:
    # Case-insensitive, so that unzipping on macOS or Windows keeps every file.
    candidate, attempt = stem, 1
    while candidate.casefold() in taken:
        attempt += 1
        candidate = f"{stem}-{image_id}" + (f"-{attempt}" if attempt > 2 else "")
    taken.add(candidate.casefold())
    return candidate


def _plan_items(
    project: Project, corrections: Sequence[Correction], images: Mapping[str, Image]
) -> list[_Item]:
    taken: set[str] = set()
    items: list[_Item] = []
    for correction in corrections:
        if correction.project_id != project.id:
            raise ValueError(
                f"correction {correction.id!r} belongs to project {correction.project_id!r}, "
                f"not to the exported project {project.id!r}"
            )
        image = images.get(correction.image_id)
        if image is None:
            raise ImageNotFound(correction.image_id)
        items.append(
            _Item(correction, image, _unique_stem(_safe_stem(image.filename), image.id, taken))
        )
    return items


def _image_file(item: _Item, data: bytes) -> tuple[str, bytes, bool]:
    """The name in ``images/``, the bytes to store, and whether they were re-encoded.

    PNG and JPEG bytes are kept as uploaded, with the uploaded suffix when it
    fits the content. Other formats (TIFF, BMP, WEBP, GIF) are decoded as the
    service decodes them and stored as PNG, since a dataset folder holds only
    PNG and JPEG.
    """
    allowed: tuple[str, ...]
    if data.startswith(_PNG_SIGNATURE):
        allowed = (".png",)
    elif data.startswith(_JPEG_SIGNATURE):
        allowed = (".jpg", ".jpeg")
    else:
        pixels = decode_image(data, max_pixels=item.image.width * item.image.height)
        return f"{item.stem}.png", encode_image_png(pixels), True
    suffix = PurePath(item.image.filename).suffix
    return f"{item.stem}{suffix if suffix.lower() in allowed else allowed[0]}", data, False


def _coco_annotations(
    mask: npt.NDArray[np.integer], schema: LabelSchema, image_number: int, first_id: int
) -> list[CocoAnnotation]:
    """One annotation per class present in ``mask``: (H, W) class ids, ignore index left out."""
    annotations: list[CocoAnnotation] = []
    for class_id, rle in mask_to_rles(mask, schema.class_ids).items():
        encoded = {"size": rle.size, "counts": rle.counts.encode("ascii")}
        annotations.append(
            CocoAnnotation(
                id=first_id + len(annotations),
                image_id=image_number,
                category_id=class_id,
                segmentation=rle,
                area=int(coco_mask.area(encoded)),
                bbox=[float(value) for value in coco_mask.toBbox(encoded)],
            )
        )
    return annotations


@dataclass
class _CocoParts:
    """The COCO entries collected while the images are written."""

    images: list[CocoImage]
    annotations: list[CocoAnnotation]


def _write_item(
    archive: zipfile.ZipFile,
    workspace: Workspace,
    schema: LabelSchema,
    item: _Item,
    coco: _CocoParts | None,
) -> ManifestEntry:
    """Write one image, and its mask (png) or collect its COCO entries (coco)."""
    image_name, data, reencoded = _image_file(item, workspace.blobs.get(item.image.blob_key))
    archive.writestr(f"{IMAGES_DIR}/{image_name}", data, compress_type=zipfile.ZIP_STORED)
    mask = load_correction_mask(workspace.blobs, item.correction)
    mask_file = None
    if coco is None:
        mask_file = f"{MASKS_DIR}/{item.stem}{MASK_SUFFIX}"
        archive.writestr(
            mask_file, encode_schema_mask(mask, schema), compress_type=zipfile.ZIP_STORED
        )
    else:
        number = len(coco.images) + 1
        coco.images.append(
            CocoImage(
                id=number,
                file_name=image_name,
                width=item.image.width,
                height=item.image.height,
                prelabel_image_id=item.image.id,
            )
        )
        coco.annotations.extend(_coco_annotations(mask, schema, number, len(coco.annotations) + 1))
    correction = item.correction
    return ManifestEntry(
        image_id=item.image.id,
        correction_id=correction.id,
        image_file=f"{IMAGES_DIR}/{image_name}",
        mask_file=mask_file,
        original_filename=item.image.filename,
        reencoded=reencoded,
        annotator=correction.annotator,
        source=correction.source,
        model_version=correction.model_version,
        created_at=correction.created_at,
        accepted=correction.metrics.accepted if correction.metrics else None,
        review_status=correction.review_status,
    )


def _coco_dataset(project: Project, coco: _CocoParts, exported_at: datetime) -> CocoDataset:
    return CocoDataset(
        info=CocoInfo(
            description=f"prelabel export of project {project.name}", date_created=exported_at
        ),
        images=coco.images,
        categories=[
            CocoCategory(id=c.id, name=c.name, color=c.color, translations=c.translations)
            for c in sorted(project.label_schema.classes, key=lambda c: c.id)
        ],
        annotations=coco.annotations,
    )


def write_export_zip(
    workspace: Workspace,
    project: Project,
    corrections: Sequence[Correction],
    export_format: ExportFormat,
    out: IO[bytes],
    *,
    export_filter: ExportFilter | None = None,
) -> ExportSummary:
    """Write the images and masks of ``corrections`` as a zip (layouts: module docstring).

    The zip is written entry by entry to ``out``, which need not be seekable
    (an HTTP body, a pipe); ``out`` is left open. Images and masks are stored
    uncompressed (they are PNG/JPEG already), JSON and YAML deflated.

    Args:
        workspace: The stores holding the project.
        project: The project the corrections belong to.
        corrections: The corrections to export, e.g. from :func:`select_corrections`;
            one image per correction, in this order.
        export_format: png (dataset folder) or coco.
        out: A binary stream open for writing.
        export_filter: The filter that chose ``corrections``, recorded in the
            manifest; None when the caller chose them otherwise.

    Returns:
        What was written.

    Raises:
        ValueError: A correction belongs to another project.
        ImageNotFound: A correction's image no longer exists.
        CodecError: A stored image is not decodable (only when it must be re-encoded).
    """
    with workspace.sessions() as session:
        images = {image.id: image for image in list_images(session, project.id)}
    items = _plan_items(project, corrections, images)
    coco = _CocoParts([], []) if export_format is ExportFormat.COCO else None
    exported_at = datetime.now(UTC)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        entries = [
            _write_item(archive, workspace, project.label_schema, item, coco) for item in items
        ]
        manifest = ExportManifest(
            project_id=project.id,
            project_name=project.name,
            format=export_format,
            filter=export_filter,
            approved_means=approved_meaning(project),
            exported_at=exported_at,
            images=entries,
        )
        archive.writestr(MANIFEST_FILE, manifest.model_dump_json(indent=2))
        if coco is not None:
            archive.writestr(COCO_FILE, _coco_dataset(project, coco, exported_at).model_dump_json())
        else:
            # Last, as write_dataset does: a truncated zip lacks labels.yaml and
            # is not mistaken for a complete dataset folder.
            archive.writestr(SCHEMA_FILE, schema_to_yaml(project.label_schema))
    summary = ExportSummary(
        project_id=project.id,
        project_name=project.name,
        format=export_format,
        images=len(entries),
        annotations=len(coco.annotations) if coco is not None else 0,
    )
    logger.info(
        "exported %d images (%d COCO annotations) of project %s as %s",
        summary.images,
        summary.annotations,
        project.id,
        export_format,
    )
    return summary


def export_project(
    workspace: Workspace,
    project: str,
    export_filter: ExportFilter,
    export_format: ExportFormat,
    out: IO[bytes],
    *,
    actor: str,
) -> ExportSummary:
    """Select a project's corrections with ``export_filter`` and write them as a zip to ``out``.

    The export is audited (filters and count) once the zip is written.

    Args:
        workspace: The stores.
        project: The project's id or name.
        export_filter: Which current corrections to export.
        export_format: png (dataset folder) or coco.
        out: A binary stream open for writing; left open.
        actor: Who exports.

    Returns:
        What was written.

    Raises:
        ProjectNotFound: No project has this id or name.
    """
    with workspace.sessions() as session:
        found = get_project(session, project)
        corrections = select_corrections(session, found, export_filter)
    summary = write_export_zip(
        workspace, found, corrections, export_format, out, export_filter=export_filter
    )
    with transaction(workspace.sessions) as session:
        record_audit(
            session,
            found.id,
            actor=actor,
            action=AuditAction.EXPORTED,
            details={
                "format": export_format.value,
                "filter": export_filter.model_dump(mode="json"),
                "images": summary.images,
            },
        )
    return summary
