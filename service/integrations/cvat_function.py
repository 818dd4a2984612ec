"""A cvat-sdk auto-annotation function whose drafts come from a prelabel service.

It runs inside ``cvat-cli`` (or a cvat-sdk program) and talks to prelabel over HTTP:
the labels of its spec are the project's classes (background left out, ids = class
ids, type ``mask``), and each image goes to ``POST /cvat/projects/{project}/invoke``,
whose shapes are rebuilt with cvat-sdk's own ``mask`` and ``encode_mask``::

    export PRELABEL_CVAT_URL=http://127.0.0.1:8000 PRELABEL_CVAT_PROJECT=roads
    cvat-cli --server-host https://cvat.example.org --auth me task auto-annotate 42 \\
        --function-module service.integrations.cvat_function      # or --function-file PATH
    # settings may also come as function parameters, which win over the environment:
    #   -p url=str:http://127.0.0.1:8000 -p project=str:roads -p timeout_s=float:120

cvat-cli calls :func:`create` with the ``-p`` parameters; cvat-sdk programs can call it
too, or build :class:`PrelabelFunction` around their own ``httpx.Client``.
"""

# No ``from __future__ import annotations``: ``--function-file`` executes this file as a
# module that is not in ``sys.modules``, where pydantic cannot resolve string annotations.
import base64
import io
import logging
from functools import cached_property
from typing import Any
from urllib.parse import quote

import cvat_sdk.auto_annotation as cvataa
import cvat_sdk.models as cvat_models
import httpx
import PIL.Image
from cvat_sdk.masks import encode_mask
from pydantic import BaseModel, ConfigDict, Field, SecretStr, TypeAdapter, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from prelabel.errors import CodecError, IntegrationError
from prelabel.integrations.cvat_shapes import DetectorRequest, DetectorShape
from prelabel.schema import LabelClass

logger = logging.getLogger(__name__)

_PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I;16"})
_SHAPES = TypeAdapter(list[DetectorShape])


class CvatFunctionSettings(BaseSettings):
    """Where the function finds prelabel: ``PRELABEL_CVAT_*`` environment variables.

    Attributes:
        url: Base URL of the prelabel service, e.g. ``http://127.0.0.1:8000``.
        project: The project's id or name.
        token: A prelabel API token, sent as ``Authorization: Bearer <token>``
            (required: prelabel authenticates every call).
        timeout_s: Timeout of each HTTP call to prelabel.
    """

    model_config = SettingsConfigDict(
        env_prefix="PRELABEL_CVAT_", env_nested_delimiter="__", extra="ignore"
    )

    url: str = Field(min_length=1)
    project: str = Field(min_length=1)
    token: SecretStr = Field(min_length=1)
    timeout_s: float = Field(default=60.0, gt=0)


class _ProjectLabels(BaseModel):
    """The part of ``GET /projects/{project}`` the function needs."""

    model_config = ConfigDict(extra="ignore")

    id: str
    name: str
    classes: list[LabelClass]
    background_id: int


class PrelabelFunction:
    """A cvat-sdk ``DetectionFunction`` backed by a prelabel project.

    The project's labels are fetched on first use of ``spec`` (or ``detect``), not
    when the object is built.
    """

    def __init__(self, client: httpx.Client, project: str) -> None:
        """Use ``client`` (its ``base_url`` is the prelabel service) for ``project``."""
        self.client = client
        self.project = project

    @cached_property
    def _labels(self) -> _ProjectLabels:
        response = self._call("GET", f"/projects/{quote(self.project, safe='')}")
        try:
            return _ProjectLabels.model_validate_json(response.content)
        except ValidationError as exc:
            raise IntegrationError(f"prelabel sent an unexpected project: {exc}") from exc

    @property
    def _foreground(self) -> list[LabelClass]:
        labels = self._labels
        return sorted(
            (c for c in labels.classes if c.id != labels.background_id), key=lambda c: c.id
        )

    @cached_property
    def spec(self) -> cvataa.DetectionFunctionSpec:
        """One ``mask`` label per class of the project except background; ids = class ids."""
        return cvataa.DetectionFunctionSpec(
            labels=[cvataa.label_spec(c.name, c.id, type="mask") for c in self._foreground]
        )

    def detect(
        self, context: cvataa.DetectionFunctionContext, image: PIL.Image.Image
    ) -> list[cvat_models.LabeledShapeRequest]:
        """The draft of ``image`` by the project's serving model, one mask per class.

        ``context.conf_threshold`` drops classes whose mean confidence is lower; None
        keeps every class.

        Raises:
            BadFunctionError: ``context.conv_mask_to_poly`` is set: prelabel only
                produces masks.
            IntegrationError: prelabel failed or answered something unexpected (its
                detail is in the message, e.g. "project has no model yet").
        """
        if context.conv_mask_to_poly:
            raise cvataa.BadFunctionError(
                "prelabel returns mask shapes only; run without --conv-mask-to-poly"
            )
        threshold = context.conf_threshold if context.conf_threshold is not None else 0.0
        body = DetectorRequest(image=_base64_png(image), threshold=threshold)
        path = f"/cvat/projects/{quote(self.project, safe='')}/invoke"
        response = self._call("POST", path, body)
        try:
            shapes = _SHAPES.validate_json(response.content)
        except ValidationError as exc:
            raise IntegrationError(f"prelabel sent unexpected shapes: {exc}") from exc
        class_ids = {c.name: c.id for c in self._foreground}
        results = [_sdk_mask(shape, class_ids, image.height, image.width) for shape in shapes]
        logger.info("frame %s: %d mask shapes from prelabel", context.frame_name, len(results))
        return results

    def _call(self, method: str, path: str, body: BaseModel | None = None) -> httpx.Response:
        """Send one request (``body`` as JSON); wrap transport failures and non-2xx answers."""
        payload = None if body is None else body.model_dump(mode="json")
        try:
            response = self.client.request(method, path, json=payload)
        except httpx.HTTPError as exc:
            raise IntegrationError(f"{method} {path} to prelabel failed: {exc}") from exc
        if response.is_error:
            raise IntegrationError(
                f"{method} {path} to prelabel answered {response.status_code}: {_detail(response)}"
            )
        return response


def create(
    url: str | None = None,
    project: str | None = None,
    token: str | None = None,
    timeout_s: float | None = None,
) -> PrelabelFunction:
    """The function factory ``cvat-cli`` calls, with its ``-p NAME=TYPE:VALUE`` parameters.

    Args:
        url: Overrides ``PRELABEL_CVAT_URL``.
        project: Overrides ``PRELABEL_CVAT_PROJECT``.
        token: Overrides ``PRELABEL_CVAT_TOKEN``.
        timeout_s: Overrides ``PRELABEL_CVAT_TIMEOUT_S``.

    Returns:
        The function, with its own ``httpx.Client``.

    Raises:
        pydantic.ValidationError: ``url``, ``project`` or ``token`` is set nowhere.
    """
    # Only the parameters given override the environment (pydantic-settings: init > env).
    given: dict[str, Any] = {"url": url, "project": project, "token": token, "timeout_s": timeout_s}
    settings = CvatFunctionSettings(**{k: v for k, v in given.items() if v is not None})
    headers = {"Authorization": f"Bearer {settings.token.get_secret_value()}"}
    client = httpx.Client(base_url=settings.url, timeout=settings.timeout_s, headers=headers)
    logger.info("prelabel function for project %s at %s", settings.project, settings.url)
    return PrelabelFunction(client, settings.project)


def _sdk_mask(
    shape: DetectorShape, class_ids: dict[str, int], height: int, width: int
) -> cvat_models.LabeledShapeRequest:
    """A detector shape from prelabel as a cvat-sdk mask shape (``encode_mask`` points)."""
    if shape.label not in class_ids:
        raise IntegrationError(f"prelabel sent label {shape.label!r}, not in the spec")
    try:
        region = shape.region(class_ids[shape.label])
        bitmap = region.full_bitmap(height, width)
    except CodecError as exc:
        raise IntegrationError(f"prelabel sent a malformed mask: {exc}") from exc
    return cvataa.mask(region.class_id, encode_mask(bitmap, region.exclusive_box))


def _base64_png(image: PIL.Image.Image) -> str:
    """``image`` as base64 PNG: lossless, so prelabel sees exactly CVAT's pixels."""
    buffer = io.BytesIO()
    (image if image.mode in _PNG_MODES else image.convert("RGB")).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _detail(response: httpx.Response) -> str:
    """prelabel's ``detail`` of an error answer, else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    detail = body.get("detail") if isinstance(body, dict) else None
    return str(detail) if detail is not None else response.text[:200]
