"""``/projects/{project}/images/{image}/correction``: submit and read human-corrected masks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import ValidationError
from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile

from prelabel.access import Permission, may
from prelabel.audit import AuditAction
from prelabel.blobs import undo_puts_on_error
from prelabel.codecs import decode_index_png, rles_to_schema_mask
from prelabel.corrections import Correction, correction_history, record_correction
from prelabel.database import retry_on_busy, transaction
from prelabel.errors import CorrectionNotFound, Forbidden, ValidationFailed
from prelabel.images import get_image
from prelabel.projects import get_project
from prelabel.schema import LabelSchema
from prelabel.workspace import Workspace
from service.auth import Caller, CallerDep
from service.deps import SettingsDep, WorkspaceDep
from service.forms import single_parts
from service.schemas import CorrectionJSON, CorrectionOut

CORRECTION_SOURCE = "api"
"""``source`` of the corrections submitted through this route."""

router = APIRouter(prefix="/projects/{project}/images/{image}", tags=["corrections"])

_BODIES: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["mask"],
                    "properties": {
                        "mask": {
                            "type": "string",
                            "format": "binary",
                            "description": "index PNG, one class id per pixel",
                        },
                        "annotator": {"type": "string"},
                        "lead_time_s": {"type": "number", "minimum": 0},
                        "draft_id": {"type": "string"},
                    },
                }
            },
            "application/json": {
                "schema": CorrectionJSON.model_json_schema(
                    ref_template="#/components/schemas/{model}"
                )
            },
        },
    }
}


_FORM_FIELDS = ("mask", "annotator", "draft_id", "lead_time_s")
"""The multipart fields of a correction, each sent at most once."""


@dataclass(frozen=True)
class CorrectionInput:
    """A parsed correction request, whichever encoding it came in."""

    annotator: str | None
    lead_time_s: float | None
    draft_id: str | None
    mask_png: bytes | None = None
    rles: dict[str, Any] | None = None


def _optional_float(value: Any, field: str) -> float | None:
    if value in (None, ""):
        return None
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise ValidationFailed(f"{field} must be a number, got {value!r}") from exc


async def _parse(request: Request, max_bytes: int) -> CorrectionInput:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/json"):
        try:
            body = CorrectionJSON.model_validate_json(await request.body())
        except ValidationError as exc:
            raise ValidationFailed(f"invalid correction JSON: {exc}") from exc
        return CorrectionInput(
            body.annotator,
            body.lead_time_s,
            body.draft_id,
            rles={k: v.model_dump() for k, v in body.classes.items()},
        )
    if not content_type.startswith("multipart/form-data"):
        raise ValidationFailed(
            f"send multipart/form-data or application/json, "
            f"not {content_type or 'no content type'!r}"
        )
    async with request.form() as form:
        parts = single_parts(form, _FORM_FIELDS)
        mask = parts.get("mask")
        if not isinstance(mask, UploadFile):
            raise ValidationFailed("multipart field 'mask' (an index PNG file) is required")
        annotator = parts.get("annotator")
        if annotator is not None and not isinstance(annotator, str):
            raise ValidationFailed("multipart field 'annotator' must be text")
        data = await mask.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise ValidationFailed(f"mask is over {max_bytes} bytes")
        draft_id = parts.get("draft_id")
        if draft_id is not None and not isinstance(draft_id, str):
            raise ValidationFailed("multipart field 'draft_id' must be text")
        lead_time_s = _optional_float(parts.get("lead_time_s"), "lead_time_s")
    return CorrectionInput(
        annotator.strip() or None if annotator else None,
        lead_time_s,
        draft_id or None,
        mask_png=data,
    )


def _decode_mask(
    parsed: CorrectionInput, size: tuple[int, int], schema: LabelSchema, max_pixels: int
) -> npt.NDArray[np.integer]:
    if parsed.mask_png is not None:
        return decode_index_png(parsed.mask_png, max_pixels=max_pixels)
    return rles_to_schema_mask(parsed.rles or {}, schema, size=size)


def _annotator(session: Session, caller: Caller, project_id: str, named: str | None) -> str:
    """Whom a correction is attributed to: the caller, or someone it may record for."""
    if named is None or named == caller.name:
        return caller.name
    if not may(session, caller.principal, project_id, Permission.CORRECT_ON_BEHALF):
        raise Forbidden(
            f"annotator {named!r} is not you ({caller.name!r}); recording corrections in "
            "another's name needs the ml-engineer or manager role"
        )
    return named


def _store(
    workspace: Workspace, caller: Caller, image: str, parsed: CorrectionInput, max_pixels: int
) -> Correction:
    """Record the correction; the whole write is tried again while SQLite is busy."""
    return retry_on_busy(lambda: _store_once(workspace, caller, image, parsed, max_pixels))


def _store_once(
    workspace: Workspace, caller: Caller, image: str, parsed: CorrectionInput, max_pixels: int
) -> Correction:
    with undo_puts_on_error(workspace.blobs) as blobs, transaction(workspace.sessions) as session:
        found_project = get_project(session, caller.checked_project.id)
        found_image = get_image(session, found_project.id, image)
        annotator = _annotator(session, caller, found_project.id, parsed.annotator)
        mask = _decode_mask(
            parsed,
            (found_image.height, found_image.width),
            found_project.label_schema,
            max_pixels,
        )
        return record_correction(
            session,
            blobs,
            project=found_project,
            image=found_image,
            mask=mask,
            annotator=annotator,
            lead_time_s=parsed.lead_time_s,
            draft_id=parsed.draft_id,
            source=CORRECTION_SOURCE,
            actor=caller.name,
        )


@router.put("/correction", openapi_extra=_BODIES)
async def put_correction(
    project: str,
    image: str,
    request: Request,
    workspace: WorkspaceDep,
    settings: SettingsDep,
    caller: CallerDep,
) -> CorrectionOut:
    """Submit the corrected mask (multipart index PNG, or JSON with per-class COCO RLE).

    The correction supersedes earlier ones (history is kept) and is compared with
    the draft it started from (``draft_id``, else the newest draft served).
    """
    parsed = await _parse(request, settings.max_upload_bytes)
    return await run_in_threadpool(
        _store, workspace, caller, image, parsed, settings.max_image_pixels
    )


def _visible(session: Session, caller: Caller, history: list[Correction]) -> list[Correction]:
    """The corrections the caller may read: everyone's, or only its own."""
    project_id = caller.checked_project.id
    if may(session, caller.principal, project_id, Permission.READ_ALL_CORRECTIONS):
        return history
    return [c for c in history if c.annotator == caller.name]


@router.get("/correction", response_class=Response, responses={200: {"content": {"image/png": {}}}})
def get_correction(
    project: str, image: str, caller: CallerDep, workspace: WorkspaceDep
) -> Response:
    """The current correction as an index PNG (header ``X-Correction-Id``).

    Annotators read only their own: another's current correction answers 404.
    """
    with workspace.sessions() as session:
        found = get_image(session, caller.checked_project.id, image)
        visible = _visible(session, caller, correction_history(session, found))
    current = next((c for c in visible if c.is_current), None)
    if current is None:
        raise CorrectionNotFound(image)
    data = workspace.blobs.get(current.mask_key)
    workspace.deferred.audit(
        found.project_id,
        actor=caller.name,
        action=AuditAction.CORRECTION_READ,
        image_id=found.id,
        details={"correction_id": current.id},
    )
    return Response(
        data,
        media_type="image/png",
        headers={"X-Correction-Id": current.id},
    )


@router.get("/corrections")
def get_corrections(
    project: str, image: str, caller: CallerDep, workspace: WorkspaceDep
) -> list[CorrectionOut]:
    """Every correction of the image, newest first, with provenance and metrics
    (annotators see only their own)."""
    with workspace.sessions() as session:
        found = get_image(session, caller.checked_project.id, image)
        return _visible(session, caller, correction_history(session, found))
