"""Label Studio as an annotation tool: label config, brush masks, bindings, task images, webhooks.

The HTTP side (the ML backend protocol under ``/labelstudio``) lives in
``service/integrations/labelstudio.py``; everything here works without FastAPI:

- the label config: the ``<BrushLabels>`` tag (``from_name``/``to_name``), its
  ``<Label>`` values, and the task data key of the image it labels;
- the mapping of Label Studio label names to a project's classes (name or
  translation), and a project spec made from the config on first ``/setup``;
- brush RLE (Label Studio's own format, through ``label_studio_sdk``'s codec);
- bindings (Label Studio project -> prelabel project), task -> image map, task images;
- webhook events: stored first, processed afterwards into corrections,
  withdrawals and training runs.

Arrays are row-major ``(H, W)``. Brush RLE encodes the flattened ``(H, W, 4)``
RGBA image Label Studio paints; the alpha channel is the mask.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePosixPath
from types import ModuleType
from typing import Literal, TypeVar
from urllib.parse import unquote_to_bytes, urljoin, urlsplit

import httpx
import numpy as np
import numpy.typing as npt
from PIL import ImageColor
from pydantic import BaseModel, ConfigDict, Field, JsonValue, SecretStr
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from prelabel.blobs import BlobStore
from prelabel.corrections import Correction, submit_correction, withdraw_correction
from prelabel.drafts import Draft
from prelabel.errors import (
    CodecError,
    ImageTooLarge,
    IntegrationError,
    PrelabelError,
    ProjectNotFound,
    SchemaError,
    ValidationFailed,
)
from prelabel.images import Image, add_image, find_image_by_sha256, get_image
from prelabel.jobs import RunKind, RunTrigger, TrainingRun, enqueue_training
from prelabel.projects import Project, ProjectSpec, create_project, get_project
from prelabel.schema import LabelClass, LabelSchema
from prelabel.tables import (
    IntegrationEventRow,
    LabelStudioAnnotationRow,
    LabelStudioBindingRow,
    LabelStudioTaskRow,
    utcnow,
)

logger = logging.getLogger(__name__)

SOURCE = "labelstudio"
"""``source`` of the corrections and integration events this module records."""

MAX_LABEL_CONFIG_CHARS = 1_000_000
MAX_EVENT_ATTEMPTS = 3
"""An event still queued after this many tries (the process died, or Label Studio was
unreachable each time) is marked failed."""

_FALLBACK_COLOURS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip
_RGBA = re.compile(r"^rgba?\(\s*(\d{1,3})\s*,\s*(\d{1,3})\s*,\s*(\d{1,3})\s*(,[^)]*)?\)$")
_LS_PROJECT = re.compile(r"^(\d{1,18})(\.\d+)?$")
_T = TypeVar("_T")


# --- label config ---------------------------------------------------------


class LsLabel(BaseModel):
    """One ``<Label value=... background=...>`` of the ``<BrushLabels>`` tag."""

    model_config = ConfigDict(frozen=True)

    value: str
    background: str | None = None


class BrushConfig(BaseModel):
    """What prelabel needs from a Label Studio label config.

    ``from_name`` and ``to_name`` are the ``name``/``toName`` of the
    ``<BrushLabels>`` tag; ``data_key`` is the task data field of the image it
    labels (``$image`` -> ``image``); ``labels`` keep the config's order.
    """

    model_config = ConfigDict(frozen=True)

    from_name: str
    to_name: str
    data_key: str
    labels: list[LsLabel]


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1].casefold()


def parse_label_config(config: str) -> BrushConfig:
    """Find the ``<BrushLabels>`` tag of a label config, its labels and its image.

    ElementTree resolves no external entities, and the bundled expat (>= 2.4.1)
    caps entity expansion, so an untrusted config cannot read files or blow up
    memory; its size is capped as well.

    Raises:
        ValidationFailed: not XML, too long, no ``<BrushLabels>`` with labels, or
            no ``<Image>`` tag that its ``toName`` names.
    """
    if len(config) > MAX_LABEL_CONFIG_CHARS:
        raise ValidationFailed(f"label config is over {MAX_LABEL_CONFIG_CHARS} characters")
    try:
        root = ET.fromstring(config)
    except ET.ParseError as exc:
        raise ValidationFailed(f"the Label Studio label config is not valid XML: {exc}") from exc
    elements = list(root.iter())
    brushes = [e for e in elements if _local(e.tag) == "brushlabels"]
    if not brushes:
        raise ValidationFailed(
            "the Label Studio label config has no <BrushLabels> tag; prelabel answers "
            "semantic segmentation with brush masks"
        )
    if len(brushes) > 1:
        logger.warning("label config has %d <BrushLabels> tags; using the first", len(brushes))
    brush = brushes[0]
    from_name, to_name = brush.get("name", ""), brush.get("toName", "")
    labels = [
        LsLabel(value=label.get("value", ""), background=label.get("background"))
        for label in brush.iter()
        if _local(label.tag) == "label" and label.get("value", "").strip()
    ]
    if not from_name or not to_name or not labels:
        raise ValidationFailed(
            "<BrushLabels> needs name, toName and at least one <Label value=...>"
        )
    images = [e for e in elements if _local(e.tag) == "image" and e.get("name") == to_name]
    if not images or not images[0].get("value", "").startswith("$"):
        raise ValidationFailed(
            f'<BrushLabels toName={to_name!r}> names no <Image name={to_name!r} value="$...">'
        )
    return BrushConfig(
        from_name=from_name,
        to_name=to_name,
        data_key=images[0].get("value", "")[1:],
        labels=labels,
    )


class LabelMapping(BaseModel):
    """Label Studio label names to class ids, for one ``<BrushLabels>`` tag."""

    model_config = ConfigDict(frozen=True)

    from_name: str
    to_name: str
    data_key: str
    classes: dict[str, int]
    """Label value -> class id, in the config's order."""

    def label_of(self, class_id: int) -> str | None:
        """The first label (config order) that maps to ``class_id``, if any."""
        return next((label for label, cid in self.classes.items() if cid == class_id), None)


def map_labels(config: BrushConfig, schema: LabelSchema) -> LabelMapping:
    """Map every label of the config to a class by name or translation (case-insensitive).

    Raises:
        SchemaError: naming each label that matches no class, and the classes known.
    """
    classes: dict[str, int] = {}
    missing: list[str] = []
    for label in config.labels:
        try:
            classes[label.value] = schema.class_by_name(label.value).id
        except SchemaError:
            missing.append(label.value)
    if missing:
        known = ", ".join(
            f"{c.name!r}" + (f" ({', '.join(c.translations.values())})" if c.translations else "")
            for c in schema.classes
        )
        raise SchemaError(
            f"Label Studio label(s) {', '.join(repr(m) for m in missing)} of <BrushLabels "
            f"name={config.from_name!r}> match no class of the prelabel project; its classes "
            f"(with translations) are {known}. Rename the label, add a translation to a class, "
            f"or bind the Label Studio project to another prelabel project."
        )
    return LabelMapping(
        from_name=config.from_name,
        to_name=config.to_name,
        data_key=config.data_key,
        classes=classes,
    )


def _colour(value: str | None, index: int) -> str:
    fallback = _FALLBACK_COLOURS[index % len(_FALLBACK_COLOURS)]
    if not value:
        return fallback
    text = value.strip()
    match = _RGBA.match(text)
    try:
        rgb = (
            tuple(int(c) for c in match.groups()[:3])
            if match
            else ImageColor.getrgb(text[:7] if re.match(r"^#[0-9a-fA-F]{8}$", text) else text)[:3]
        )
    except ValueError:
        logger.debug("label colour %r not understood; using %s", value, fallback)
        return fallback
    if any(c > 255 for c in rgb):
        return fallback
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def project_spec_from_config(ls_project: str, config: BrushConfig) -> ProjectSpec:
    """The prelabel project made for a Label Studio project on its first ``/setup``.

    Named ``labelstudio-<id>``; one class per label, colours from the labels'
    ``background``. A label named "background" (any case) gets id 0 and the others
    1..n in config order; without one, id 0 is an added "background" class.
    """
    background = next((x for x in config.labels if x.value.casefold() == "background"), None)
    classes = [
        LabelClass(
            id=0,
            name=background.value if background else "background",
            color=_colour(background.background, 0) if background else "#000000",
        )
    ]
    others = [x for x in config.labels if x is not background]
    for number, label in enumerate(others, start=1):
        classes.append(
            LabelClass(id=number, name=label.value, color=_colour(label.background, number))
        )
    return ProjectSpec(name=f"labelstudio-{ls_project}", classes=classes)


# --- brush RLE ------------------------------------------------------------


def _brush() -> ModuleType:
    # label_studio_sdk's package __init__ loads its whole API client (pandas, nltk;
    # about 2.5 s), so the codec is imported when first used, not at service start.
    from label_studio_sdk.converter import brush

    return brush


def encode_brush(binary: npt.NDArray[np.bool_]) -> list[int]:
    """Encode a binary mask as Label Studio brush RLE.

    Args:
        binary: ``(H, W)`` bool, True where the label is painted.

    Returns:
        The RLE bytes as ints (what ``value.rle`` holds), from
        ``label_studio_sdk.converter.brush.mask2rle``.

    Raises:
        ValueError: not a non-empty 2-D bool array.
    """
    if binary.ndim != 2 or binary.dtype != np.bool_ or binary.size == 0:
        raise ValueError(f"binary must be (H, W) bool, got shape {binary.shape} {binary.dtype}")
    rle = _brush().mask2rle(np.where(binary, np.uint8(255), np.uint8(0)))
    return [int(v) for v in rle]


def decode_brush(rle: Sequence[int], *, height: int, width: int) -> npt.NDArray[np.bool_]:
    """Decode Label Studio brush RLE into a binary mask of a known size.

    The header's value count is checked against ``height * width * 4`` before
    decoding, so a hostile RLE cannot make the decoder allocate at will.

    Args:
        rle: ``value.rle`` of a ``brushlabels`` result (ints 0..255).
        height: The image height the mask must have.
        width: The image width.

    Returns:
        ``(H, W)`` bool: alpha > 127.

    Raises:
        CodecError: not bytes, a size other than ``height x width``, or truncated.
    """
    try:
        data = bytes(rle)
    except (TypeError, ValueError) as exc:
        raise CodecError("brush RLE must be a list of ints in 0..255") from exc
    if len(data) < 4:
        raise CodecError(f"brush RLE of {len(data)} bytes is too short for its header")
    count = int.from_bytes(data[:4], "big")
    if count != height * width * 4:
        raise CodecError(
            f"brush RLE holds {count} values, expected {height}x{width}x4 = {height * width * 4}"
        )
    try:
        flat = _brush().decode_rle(data)
    except (ValueError, IndexError) as exc:
        raise CodecError(f"brush RLE is truncated or corrupt: {exc}") from exc
    rgba = np.asarray(flat, dtype=np.uint8).reshape(height, width, 4)
    return np.ascontiguousarray(rgba[:, :, 3] > 127)


# --- what /predict answers ------------------------------------------------


class BrushValue(BaseModel):
    format: Literal["rle"] = "rle"
    rle: list[int]
    brushlabels: list[str]


class BrushRegion(BaseModel):
    """One ``brushlabels`` region: all pixels of one class."""

    id: str
    from_name: str
    to_name: str
    type: Literal["brushlabels"] = "brushlabels"
    original_width: int
    original_height: int
    image_rotation: int = 0
    value: BrushValue
    score: float


class TaskPrediction(BaseModel):
    """The prediction for one task: a region per class present, the mean confidence."""

    result: list[BrushRegion]
    score: float
    model_version: str


def draft_regions(
    mask: npt.NDArray[np.integer],
    confidence: npt.NDArray[np.float32],
    *,
    mapping: LabelMapping,
    background_id: int,
    region_prefix: str,
) -> list[BrushRegion]:
    """One brush region per class present in a draft, except the background.

    Args:
        mask: ``(H, W)`` class ids of the draft.
        confidence: ``(H, W)`` float32 in [0, 1]; a region's score is its mean.
        mapping: The labels of the Label Studio project; a class no label maps to
            is left out.
        background_id: The class that is not sent (unlabelled in Label Studio).
        region_prefix: Makes region ids unique across drafts (e.g. the draft id).
    """
    height, width = mask.shape
    regions: list[BrushRegion] = []
    for class_id in np.unique(mask).tolist():
        label = mapping.label_of(int(class_id))
        if class_id == background_id or label is None:
            continue
        binary = mask == class_id
        regions.append(
            BrushRegion(
                id=f"{region_prefix}-{class_id}",
                from_name=mapping.from_name,
                to_name=mapping.to_name,
                original_width=width,
                original_height=height,
                value=BrushValue(rle=encode_brush(binary), brushlabels=[label]),
                score=round(float(confidence[binary].mean()), 6),
            )
        )
    return regions


# --- webhook payloads -----------------------------------------------------

_LOOSE = ConfigDict(extra="ignore")


class LsUser(BaseModel):
    model_config = _LOOSE

    id: int | None = None
    email: str | None = None


class LsResultValue(BaseModel):
    model_config = _LOOSE

    format: str | None = None
    rle: list[int] | None = None
    brushlabels: list[str] | None = None


class LsResult(BaseModel):
    """One region of an annotation; only ``brushlabels`` regions are read."""

    model_config = _LOOSE

    id: str | None = None
    type: str
    from_name: str = ""
    to_name: str = ""
    original_width: int | None = None
    original_height: int | None = None
    value: LsResultValue = Field(default_factory=LsResultValue)


class LsAnnotation(BaseModel):
    """An annotation as Label Studio's webhooks serialize it (``completed_by`` is a user id)."""

    model_config = _LOOSE

    id: int
    task: int | None = None
    project: int | None = None
    result: list[LsResult] = Field(default_factory=list)
    completed_by: int | str | LsUser | None = None
    lead_time: float | None = None
    parent_prediction: int | None = None
    was_cancelled: bool = False


class LsTask(BaseModel):
    model_config = _LOOSE

    id: int
    data: dict[str, JsonValue] = Field(default_factory=dict)


class LsProjectRef(BaseModel):
    model_config = _LOOSE

    id: int
    label_config: str | None = None


class LsAnnotationRef(BaseModel):
    model_config = _LOOSE

    id: int


class LsWebhook(BaseModel):
    """A webhook call: an action and, depending on it, annotation(s), task(s), project."""

    model_config = _LOOSE

    action: str
    annotation: LsAnnotation | list[LsAnnotation] | None = None
    annotations: list[LsAnnotationRef] | None = None
    task: LsTask | list[LsTask] | None = None
    project: LsProjectRef | None = None


class StoredEvent(BaseModel):
    """What an ``integration_events`` row holds: the webhook and who sent it."""

    webhook: LsWebhook
    auth_user: str | None = None


ANNOTATION_ACTIONS = frozenset({"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED"})
HANDLED_ACTIONS = ANNOTATION_ACTIONS | {"ANNOTATIONS_DELETED", "START_TRAINING"}
"""Webhook actions that are stored and processed; Label Studio sends every action to a
backend's webhook, the others are acknowledged and dropped."""


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
    session: Session, ls_project: str, config: BrushConfig, auto_create: bool
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
        return create_project(session, spec).id


def setup_binding(
    session: Session,
    *,
    ls_project: str,
    label_config: str,
    hostname: str | None,
    access_token: str | None,
    auto_create: bool,
) -> Binding:
    """Bind (or refresh the binding of) a Label Studio project, as ``/setup`` asks.

    Idempotent and cheap: Label Studio calls it before every prediction batch.
    An unknown project gets a new prelabel project when ``auto_create`` (or the
    one named ``labelstudio-<id>`` if it exists). Hostname, access token and the
    label mapping are refreshed from the call.

    Raises:
        ValidationFailed: no usable ``<BrushLabels>``; unknown project without ``auto_create``.
        SchemaError: a label maps to no class of the bound project.
    """
    config = parse_label_config(label_config)
    row = session.get(LabelStudioBindingRow, ls_project)
    if row is None:
        project_id = _bound_project(session, ls_project, config, auto_create)
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


def bind_project(session: Session, *, ls_project: str, project_ref: str) -> Binding:
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
    logger.info("bound Label Studio project %s to project %s (by admin)", ls_project, project.id)
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


def _decode_data_url(ref: str, max_bytes: int) -> bytes:
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


@dataclass(frozen=True)
class ImageSource:
    """Fetches task images: ``data:`` URLs, absolute URLs, or paths on the Label Studio host.

    Attributes:
        client: Has the timeouts; injected so tests can use a MockTransport.
        max_bytes: Larger images are refused.
        url_override: Label Studio's address as prelabel reaches it, replacing
            the ``hostname`` from ``/setup`` when set.
    """

    client: httpx.Client
    max_bytes: int
    url_override: str | None = None

    def fetch(self, ref: str, binding: Binding) -> bytes:
        """The bytes of the image ``ref`` names.

        The access token from ``/setup`` goes only to the Label Studio host
        (``Authorization: Token ...``), never to other hosts.

        Raises:
            CodecError: a malformed ``data:`` URL.
            ImageTooLarge: over ``max_bytes``.
            IntegrationError: unsupported reference, no host known for a path,
                a timeout, a network error or a non-2xx answer.
        """
        if ref.startswith("data:"):
            return _decode_data_url(ref, self.max_bytes)
        host = (self.url_override or binding.hostname or "").rstrip("/")
        if ref.startswith("/") and not ref.startswith("//"):
            if not host:
                raise IntegrationError(
                    f"task image {ref!r} is a path on the Label Studio host, but /setup gave no "
                    f"hostname; set PRELABEL_LABELSTUDIO_URL"
                )
            url = urljoin(host + "/", ref.lstrip("/"))
        elif urlsplit(ref).scheme in ("http", "https"):
            url = ref
        else:
            raise IntegrationError(
                f"task image {ref[:100]!r}: expected a data: URL, an http(s) URL or a /path on "
                f"the Label Studio host"
            )
        headers = {}
        if host and binding.access_token and _same_origin(url, host):
            headers["Authorization"] = f"Token {binding.access_token.get_secret_value()}"
        return self._get(url, headers)

    def _get(self, url: str, headers: dict[str, str]) -> bytes:
        shown = url.split("?", 1)[0]
        try:
            with self.client.stream("GET", url, headers=headers, follow_redirects=True) as response:
                if response.status_code >= 400:
                    hint = (
                        " (the access token from /setup was refused)"
                        if response.status_code in (401, 403)
                        else ""
                    )
                    raise IntegrationError(
                        f"fetching task image {shown} failed: HTTP {response.status_code}{hint}"
                    )
                chunks: list[bytes] = []
                size = 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise ImageTooLarge(f"task image {shown} is over {self.max_bytes} bytes")
                    chunks.append(chunk)
        except httpx.TimeoutException as exc:
            raise IntegrationError(f"fetching task image {shown} timed out ({exc})") from exc
        except httpx.HTTPError as exc:
            raise IntegrationError(f"fetching task image {shown} failed: {exc}") from exc
        return b"".join(chunks)


def _same_origin(url: str, host: str) -> bool:
    a, b = urlsplit(url), urlsplit(host)
    return (a.scheme, a.netloc) == (b.scheme, b.netloc)


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


# --- corrections from annotations ----------------------------------------


def annotation_mask(
    results: Sequence[LsResult],
    *,
    mapping: LabelMapping,
    schema: LabelSchema,
    height: int,
    width: int,
) -> npt.NDArray[np.integer]:
    """The index mask an annotation paints: its brush regions, later ones on top.

    Pixels no region covers are background. Regions of other tags than the
    mapping's ``<BrushLabels>`` are ignored.

    Returns:
        ``(H, W)`` class ids, dtype ``schema.mask_dtype``.

    Raises:
        ValidationFailed: a region of another size than the image, or with not
            exactly one label.
        SchemaError: a label that maps to no class.
        CodecError: malformed RLE.
    """
    mask = np.full((height, width), schema.background, dtype=schema.mask_dtype)
    for result in results:
        if result.type.casefold() != "brushlabels" or result.from_name != mapping.from_name:
            continue
        value = result.value
        if value.rle is None or (value.format or "rle") != "rle":
            continue
        if (result.original_height, result.original_width) != (height, width):
            raise ValidationFailed(
                f"region {result.id} is {result.original_width}x{result.original_height}, "
                f"the image is {width}x{height}"
            )
        labels = value.brushlabels or []
        if len(labels) != 1:
            raise ValidationFailed(f"region {result.id} has labels {labels}; expected exactly one")
        class_id = mapping.classes.get(labels[0])
        if class_id is None:
            class_id = schema.class_by_name(labels[0]).id
        mask[decode_brush(value.rle, height=height, width=width)] = class_id
    return mask


def annotator_name(completed_by: int | str | LsUser | None, fallback: str) -> str:
    """Who made an annotation: the user's email, else ``labelstudio:<user id>``, else fallback."""
    if isinstance(completed_by, LsUser):
        if completed_by.email:
            return completed_by.email
        completed_by = completed_by.id
    if isinstance(completed_by, int):
        return f"labelstudio:{completed_by}"
    if isinstance(completed_by, str) and completed_by.strip():
        return completed_by.strip()
    return fallback


# --- events ---------------------------------------------------------------


def record_event(session: Session, event: StoredEvent) -> str:
    """Store a webhook call to be processed later; returns the event id."""
    row = IntegrationEventRow(
        source=SOURCE,
        action=event.webhook.action,
        payload=event.model_dump(mode="json", exclude_none=True),
        status="queued",
        attempts=0,
    )
    session.add(row)
    session.flush()
    logger.info("stored Label Studio event %s (%s)", row.id, row.action)
    return row.id


@dataclass(frozen=True)
class EventContext:
    """What processing an event needs besides the database."""

    blobs: BlobStore
    images: ImageSource
    max_pixels: int


def _binding_for(session: Session, webhook: LsWebhook, annotation: LsAnnotation | None) -> Binding:
    ls_id = webhook.project.id if webhook.project else (annotation.project if annotation else None)
    if ls_id is None:
        raise ValidationFailed(f"{webhook.action} names no Label Studio project")
    binding = get_binding(session, str(ls_id))
    if binding is None:
        raise ValidationFailed(f"Label Studio project {ls_id} is not bound; /setup has not run")
    return binding


def _listed(value: _T | list[_T] | None) -> list[_T]:
    # Label Studio sends one annotation and task, or lists of them for bulk actions.
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _event_mapping(webhook: LsWebhook, binding: Binding, project: Project) -> LabelMapping:
    if webhook.project and webhook.project.label_config:
        return map_labels(parse_label_config(webhook.project.label_config), project.label_schema)
    if binding.mapping is None:
        raise ValidationFailed(
            f"no label config known for Label Studio project {binding.ls_project}; "
            f"/setup has not run"
        )
    return binding.mapping


def _image_for_task(
    session: Session,
    ctx: EventContext,
    binding: Binding,
    mapping: LabelMapping,
    webhook: LsWebhook,
    task_id: int,
) -> Image:
    image = task_image(session, binding, task_id)
    if image is not None:
        return image
    task = next((t for t in _listed(webhook.task) if t.id == task_id), None)
    if task is None:
        raise ValidationFailed(
            f"task {task_id} was never predicted and the webhook carries no task data"
        )
    ref = task_image_ref(task.data, mapping.data_key, task_id)
    data = ctx.images.fetch(ref, binding)
    return register_task_image(
        session,
        ctx.blobs,
        binding=binding,
        task_id=task_id,
        ref=ref,
        data=data,
        max_pixels=ctx.max_pixels,
    )


def _apply_annotation(
    session: Session, ctx: EventContext, event: StoredEvent, annotation: LsAnnotation
) -> Correction | None:
    if annotation.was_cancelled or annotation.task is None:
        logger.info("annotation %s skipped (cancelled or without task)", annotation.id)
        return None
    webhook = event.webhook
    binding = _binding_for(session, webhook, annotation)
    project = get_project(session, binding.project_id)
    mapping = _event_mapping(webhook, binding, project)
    image = _image_for_task(session, ctx, binding, mapping, webhook, annotation.task)
    mask = annotation_mask(
        annotation.result,
        mapping=mapping,
        schema=project.label_schema,
        height=image.height,
        width=image.width,
    )
    task_row = session.get(LabelStudioTaskRow, (binding.ls_project, annotation.task))
    correction = submit_correction(
        session,
        ctx.blobs,
        project=project,
        image=image,
        mask=mask,
        annotator=annotator_name(annotation.completed_by, event.auth_user or SOURCE),
        lead_time_s=annotation.lead_time,
        draft_id=task_row.draft_id if task_row else None,
        source=SOURCE,
    )
    session.add(
        LabelStudioAnnotationRow(
            ls_project=binding.ls_project,
            annotation_id=annotation.id,
            task_id=annotation.task,
            correction_id=correction.id,
        )
    )
    return correction


def _withdraw_annotations(session: Session, webhook: LsWebhook) -> int:
    ids = [ref.id for ref in webhook.annotations or []]
    query = select(LabelStudioAnnotationRow).where(LabelStudioAnnotationRow.annotation_id.in_(ids))
    if webhook.project is not None:
        query = query.where(LabelStudioAnnotationRow.ls_project == str(webhook.project.id))
    rows = session.scalars(query.order_by(LabelStudioAnnotationRow.created_at.desc())).all()
    for row in rows:
        withdraw_correction(
            session,
            row.correction_id,
            reason=f"Label Studio annotation {row.annotation_id} deleted",
        )
    return len(rows)


def _start_training(session: Session, webhook: LsWebhook) -> TrainingRun:
    binding = _binding_for(session, webhook, None)
    return enqueue_training(
        session, binding.project_id, trigger=RunTrigger.MANUAL, kind=RunKind.INCREMENTAL
    )


def apply_event(session: Session, ctx: EventContext, event: StoredEvent) -> str:
    """Carry out one stored event; returns a one-line summary.

    Raises:
        PrelabelError: whatever stops it (unbound project, bad mask, image fetch).
    """
    webhook = event.webhook
    if webhook.action in ANNOTATION_ACTIONS:
        made = [_apply_annotation(session, ctx, event, a) for a in _listed(webhook.annotation)]
        return f"corrections {[c.id for c in made if c is not None]}"
    if webhook.action == "ANNOTATIONS_DELETED":
        return f"withdrew {_withdraw_annotations(session, webhook)} correction(s)"
    if webhook.action == "START_TRAINING":
        return f"training run {_start_training(session, webhook).id}"
    raise ValidationFailed(f"action {webhook.action!r} is not handled")


def _next_event(factory: sessionmaker[Session]) -> tuple[str, StoredEvent] | None:
    with factory() as session, session.begin():
        while True:
            row = session.scalars(
                select(IntegrationEventRow)
                .where(IntegrationEventRow.source == SOURCE, IntegrationEventRow.status == "queued")
                .order_by(IntegrationEventRow.created_at, IntegrationEventRow.id)
                .limit(1)
            ).first()
            if row is None:
                return None
            row.attempts += 1
            if row.attempts <= MAX_EVENT_ATTEMPTS:
                return row.id, StoredEvent.model_validate(row.payload)
            row.status, row.processed_at = "failed", utcnow()
            row.error = f"gave up after {MAX_EVENT_ATTEMPTS} attempts"
            logger.error("Label Studio event %s: %s", row.id, row.error)


def _finish_event(
    factory: sessionmaker[Session], event_id: str, status: str, error: str | None
) -> None:
    with factory() as session, session.begin():
        row = session.get(IntegrationEventRow, event_id)
        if row is not None:
            row.status, row.error, row.processed_at = status, error, utcnow()


def process_pending_events(factory: sessionmaker[Session], ctx: EventContext) -> int:
    """Process every queued Label Studio event, oldest first, each in its own transaction.

    Called after each webhook answer and at service start, so events left
    queued by a stopped process are retried. A failure of the annotation tool
    (``IntegrationError``) leaves the event queued for a later try (up to
    :data:`MAX_EVENT_ATTEMPTS`); any other error marks it failed, with the
    error, and processing goes on with the next. Not safe to run concurrently:
    the caller serializes calls.

    Returns:
        The number of events processed (done or failed).
    """
    processed = 0
    while (claimed := _next_event(factory)) is not None:
        event_id, event = claimed
        try:
            with factory() as session, session.begin():
                summary = apply_event(session, ctx, event)
        except IntegrationError as exc:
            logger.warning("Label Studio event %s will be retried: %s", event_id, exc)
            return processed
        except PrelabelError as exc:
            logger.warning(
                "Label Studio event %s (%s) failed: %s", event_id, event.webhook.action, exc
            )
            _finish_event(factory, event_id, "failed", str(exc))
        except Exception as exc:  # keep going with the next event; the error is recorded as is
            logger.exception("Label Studio event %s failed unexpectedly", event_id)
            _finish_event(factory, event_id, "failed", f"{type(exc).__name__}: {exc}")
        else:
            logger.info(
                "Label Studio event %s (%s) done: %s", event_id, event.webhook.action, summary
            )
            _finish_event(factory, event_id, "done", None)
        processed += 1
    return processed
