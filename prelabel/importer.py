"""Import a dataset folder (``images/``, ``masks/``, ``labels.yaml``) into a project."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from prelabel.audit import AuditAction, record_audit
from prelabel.codecs import decode_index_png
from prelabel.corrections import record_correction
from prelabel.datasets.folder import list_items, read_schema
from prelabel.errors import ProjectNotFound, SchemaError
from prelabel.images import add_image
from prelabel.projects import Project, ProjectSpec, create_project, get_project
from prelabel.tables import ImageRow
from prelabel.workspace import Workspace

logger = logging.getLogger(__name__)

IMPORT_ANNOTATOR = "import"
IMPORT_SOURCE = "import"


@dataclass(frozen=True)
class ImportReport:
    """What an import did."""

    project_id: str
    images_added: int
    images_skipped: int
    corrections_added: int


def _ensure_project(workspace: Workspace, directory: Path, name: str, actor: str) -> Project:
    schema = read_schema(directory)
    with workspace.sessions() as session, session.begin():
        try:
            project = get_project(session, name)
        except ProjectNotFound:
            spec = ProjectSpec(
                name=name,
                classes=schema.classes,
                ignore_index=schema.ignore_index,
                background_id=schema.background_id,
            )
            return create_project(session, spec, actor=actor)
    if project.label_schema.classes != schema.classes:
        raise SchemaError(
            f"labels.yaml in {directory} does not match the classes of project "
            f"{name!r}; import into a new project instead"
        )
    return project


def import_dataset(
    workspace: Workspace,
    directory: Path,
    *,
    project: str,
    max_pixels: int,
    actor: str,
    with_mask: Callable[[str], bool] = lambda _: True,
    include: Callable[[str], bool] = lambda _: True,
    on_item: Callable[[], None] = lambda: None,
) -> ImportReport:
    """Import images (skipping ones already imported, by file name and sha256) and masks.

    Masks become corrections by the annotator ``import``, recorded like any other
    (so the project's training policy applies as they arrive); ``with_mask(stem)``
    selects which masks to import (the demo leaves some images unlabelled) and
    ``include(stem)`` which images to import at all.
    The project is created from ``labels.yaml`` when it does not exist. Each image
    is stored (and audited) in its own transaction; a summary entry follows.
    """
    found = _ensure_project(workspace, directory, project, actor)
    project_id = found.id
    added = skipped = corrections = 0
    for item in filter(lambda i: include(i.stem), list_items(directory)):
        data = item.image_path.read_bytes()
        with workspace.sessions() as session, session.begin():
            known = session.scalar(
                select(ImageRow.id).where(
                    ImageRow.project_id == project_id,
                    ImageRow.filename == item.image_path.name,
                    ImageRow.sha256 == hashlib.sha256(data).hexdigest(),
                )
            )
            if known is not None:
                skipped += 1
                on_item()
                continue
            image = add_image(
                session,
                workspace.blobs,
                project_id=project_id,
                filename=item.image_path.name,
                data=data,
                max_pixels=max_pixels,
                actor=actor,
            )
            added += 1
            if item.mask_path is not None and with_mask(item.stem):
                mask = decode_index_png(item.mask_path.read_bytes(), max_pixels=max_pixels)
                record_correction(
                    session,
                    workspace.blobs,
                    project=found,
                    image=image,
                    mask=mask,
                    annotator=IMPORT_ANNOTATOR,
                    source=IMPORT_SOURCE,
                    actor=actor,
                )
                corrections += 1
        on_item()
    with workspace.sessions() as session, session.begin():
        record_audit(
            session,
            project_id,
            actor=actor,
            action=AuditAction.IMPORTED,
            details={"added": added, "skipped": skipped, "corrections": corrections},
        )
    logger.info(
        "imported %s into project %s: %d images added, %d skipped, %d corrections",
        directory,
        project_id,
        added,
        skipped,
        corrections,
    )
    return ImportReport(project_id, added, skipped, corrections)
