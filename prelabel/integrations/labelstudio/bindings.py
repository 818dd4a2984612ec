"""Bindings (Label Studio project -> prelabel project), the task -> image map, task images.

Fetching a task's image over the network is the service's job (``TaskImageSource``
is what the core asks of it); the core decodes ``data:`` URLs and stores images.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
from collections.abc import Mapping
from datetime import datetime
from pathlib import PurePosixPath
from typing import Protocol
from urllib.parse import unquote_to_bytes, urlsplit

from pydantic import BaseModel, ConfigDict, JsonValue, SecretStr
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from prelabel.audit import AuditAction, record_audit
from prelabel.blobs import BlobStore
from prelabel.drafts import Draft
from prelabel.errors import (
    CodecError,
    ImageTooLarge,
    ProjectNotFound,
    ValidationFailed,
)
from prelabel.images import Image, add_image, find_image_by_sha256, get_image
from prelabel.integrations.labelstudio.label_config import (
    BrushConfig,
    LabelMapping,
    map_labels,
    parse_label_config,
    project_spec_from_config,
)
from prelabel.projects import create_project, get_project
from prelabel.tables import LabelStudioBindingRow, LabelStudioTaskRow, utcnow

logger = logging.getLogger(__name__)

_LS_PROJECT = re.compile(r"^(\d{1,18})(\.\d+)?$")


# --- bindings -------------------------------------------------------------


class Binding(BaseModel):
    """A Label Studio project bound to a prelabel project."""

    model_config = ConfigDict(frozen=True)

    ls_project: str
    project_id: str
    hostname: str | None
    access_token: SecretStr | None
    mapping: LabelMapping | None
    created_at: datetime
    updated_at: datetime


def _to_binding(row: LabelStudioBindingRow) -> Binding:
    return Binding(
        ls_project=row.ls_project,
        project_id=row.project_id,
        hostname=row.hostname,
        access_token=SecretStr(row.access_token) if row.access_token else None,
        mapping=LabelMapping.model_validate(row.label_mapping) if row.label_mapping else None,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def ls_project_key(project: str | int) -> str:
    """The Label Studio project id from ``"<id>.<created epoch>"`` (or a bare id).

    Raises:
        ValidationFailed: not of that form.
    """
    match = _LS_PROJECT.match(str(project).strip())
    if match is None:
        raise ValidationFailed(
            f"Label Studio project {project!r} is not '<id>' or '<id>.<created epoch>'"
        )
    return match.group(1)


def _bound_project(
    session: Session, ls_project: str, config: BrushConfig, auto_create: bool, actor: str
) -> str:
    if not auto_create:
        raise ValidationFailed(
            f"Label Studio project {ls_project} is not bound to a prelabel project: bind it "
            f"with PUT /labelstudio/bindings/{ls_project} or set PRELABEL_LABELSTUDIO_AUTO_CREATE"
        )
    spec = project_spec_from_config(ls_project, config)
    try:
        return get_project(session, spec.name).id
    except ProjectNotFound:
        return create_project(session, spec, actor=actor).id


def setup_binding(
    session: Session,
    *,
    ls_project: str,
    label_config: str,
    hostname: str | None,
    access_token: str | None,
    auto_create: bool,
    actor: str,
) -> Binding:
    """Bind (or refresh the binding of) a Label Studio project, as ``/setup`` asks.

    Idempotent and cheap: Label Studio calls it before every prediction batch.
    An unknown project gets a new prelabel project when ``auto_create`` (or the
    one named ``labelstudio-<id>`` if it exists). Hostname, access token and the
    label mapping are refreshed from the call. ``access_token`` is stored as given:
    the service passes it sealed (encrypted), the core never sees it in clear.

    Raises:
        ValidationFailed: no usable ``<BrushLabels>``; unknown project without ``auto_create``.
        SchemaError: a label maps to no class of the bound project.
    """
    config = parse_label_config(label_config)
    row = session.get(LabelStudioBindingRow, ls_project)
    if row is None:
        project_id = _bound_project(session, ls_project, config, auto_create, actor)
        row = LabelStudioBindingRow(ls_project=ls_project, project_id=project_id)
        session.add(row)
        logger.info("bound Label Studio project %s to project %s", ls_project, project_id)
    mapping = map_labels(config, get_project(session, row.project_id).label_schema)
    fresh = (hostname or None, access_token or None, mapping.model_dump(mode="json"))
    if (row.hostname, row.access_token, row.label_mapping) != fresh:
        row.hostname, row.access_token, row.label_mapping = fresh
        row.updated_at = utcnow()
    session.flush()
    return _to_binding(row)


def bind_project(session: Session, *, ls_project: str, project_ref: str, actor: str) -> Binding:
    """Bind a Label Studio project to an existing prelabel project (an admin's choice).

    Rebinding to another project forgets the task -> image map (those images
    belong to the old project); the label mapping is checked at the next ``/setup``.

    Raises:
        ProjectNotFound: no project with this id or name.
    """
    project = get_project(session, project_ref)
    row = session.get(LabelStudioBindingRow, ls_project)
    if row is None:
        row = LabelStudioBindingRow(ls_project=ls_project, project_id=project.id)
        session.add(row)
    elif row.project_id != project.id:
        session.execute(
            delete(LabelStudioTaskRow).where(LabelStudioTaskRow.ls_project == ls_project)
        )
        row.project_id, row.label_mapping, row.updated_at = project.id, None, utcnow()
    session.flush()
    record_audit(
        session,
        project.id,
        actor=actor,
        action=AuditAction.BINDING_SET,
        details={"ls_project": ls_project},
    )
    logger.info("bound Label Studio project %s to project %s by %s", ls_project, project.id, actor)
    return _to_binding(row)


def get_binding(session: Session, ls_project: str) -> Binding | None:
    """The binding of a Label Studio project, if it has one."""
    row = session.get(LabelStudioBindingRow, ls_project)
    return _to_binding(row) if row else None


def list_bindings(session: Session) -> list[Binding]:
    """Every binding, oldest first."""
    rows = session.scalars(select(LabelStudioBindingRow).order_by(LabelStudioBindingRow.created_at))
    return [_to_binding(row) for row in rows]


# --- task images ----------------------------------------------------------


def task_image_ref(data: Mapping[str, JsonValue], data_key: str, task_id: int) -> str:
    """The image reference in a task's data (``data[data_key]``).

    Raises:
        ValidationFailed: the key is missing or not a string.
    """
    ref = data.get(data_key)
    if not isinstance(ref, str) or not ref:
        raise ValidationFailed(
            f"task {task_id} has no image under data[{data_key!r}] (keys: {sorted(data)})"
        )
    return ref


def decode_data_url(ref: str, max_bytes: int) -> bytes:
    """The bytes a ``data:`` URL carries (base64 or percent-encoded).

    Raises:
        CodecError: no ``,`` before the payload, or invalid base64.
        ImageTooLarge: the payload is over ``max_bytes``.
    """
    header, sep, payload = ref[5:].partition(",")
    if not sep:
        raise CodecError("data: URL without ',' before its payload")
    if len(payload) > max_bytes * 4 // 3 + 4:
        raise ImageTooLarge(f"data: URL image over {max_bytes} bytes")
    if header.endswith(";base64"):
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise CodecError(f"data: URL is not valid base64: {exc}") from exc
    return unquote_to_bytes(payload)


class TaskImageSource(Protocol):
    """Where task images come from: fetched from Label Studio (or another host) by the
    service's adapter, ``service.integrations.labelstudio_images.ImageSource``."""

    def fetch(self, ref: str, binding: Binding) -> bytes:
        """The bytes of the image ``ref`` (a task's ``data[data_key]``) names.

        Raises:
            CodecError, ImageTooLarge: a malformed ``data:`` URL, or too many bytes.
            IntegrationError: the image cannot be fetched.
        """
        ...


def _filename(ref: str, task_id: int) -> str:
    if ref.startswith("data:"):
        return f"labelstudio-task-{task_id}"
    return PurePosixPath(urlsplit(ref).path).name or f"labelstudio-task-{task_id}"


def task_image(session: Session, binding: Binding, task_id: int) -> Image | None:
    """The prelabel image already recorded for a task, if any."""
    row = session.get(LabelStudioTaskRow, (binding.ls_project, task_id))
    return get_image(session, binding.project_id, row.image_id) if row else None


def register_task_image(
    session: Session,
    blobs: BlobStore,
    *,
    binding: Binding,
    task_id: int,
    ref: str,
    data: bytes,
    max_pixels: int,
    actor: str,
) -> Image:
    """Store a task's image (or reuse the project's image with the same bytes) and map the task.

    Raises:
        CodecError, ImageTooLarge: the bytes are not an acceptable image.
    """
    image = find_image_by_sha256(session, binding.project_id, hashlib.sha256(data).hexdigest())
    if image is None:
        image = add_image(
            session,
            blobs,
            project_id=binding.project_id,
            filename=_filename(ref, task_id),
            data=data,
            max_pixels=max_pixels,
            actor=actor,
        )
    row = session.get(LabelStudioTaskRow, (binding.ls_project, task_id))
    if row is None:
        session.add(
            LabelStudioTaskRow(ls_project=binding.ls_project, task_id=task_id, image_id=image.id)
        )
    elif row.image_id != image.id:
        row.image_id, row.draft_id, row.model_version, row.updated_at = (
            image.id,
            None,
            None,
            utcnow(),
        )
    session.flush()
    return image


def record_task_draft(session: Session, binding: Binding, task_id: int, draft: Draft) -> None:
    """Remember the draft sent for a task: a later correction is compared with it."""
    row = session.get(LabelStudioTaskRow, (binding.ls_project, task_id))
    if row is None:
        raise ValidationFailed(f"task {task_id} has no image recorded")
    row.draft_id, row.model_version, row.updated_at = draft.id, draft.model_version, utcnow()
