"""Quality review: the review queue and reviewers' decisions on corrections."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import numpy.typing as npt
from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from prelabel.codecs import decode_index_png, rles_to_schema_mask
from prelabel.database import transaction
from prelabel.errors import ValidationFailed
from prelabel.images import get_image
from prelabel.projects import Project, get_project
from prelabel.reviewing import ReviewStatus
from prelabel.reviews import (
    ReviewItem,
    ReviewOutcome,
    ReviewRequest,
    review_correction,
    review_queue,
)
from prelabel.tables import CorrectionRow
from prelabel.workspace import Workspace
from service.auth import Caller, CallerDep
from service.deps import SettingsDep, WorkspaceDep
from service.forms import single_parts
from service.schemas import ReviewItemOut, ReviewJSON, ReviewOutcomeOut

router = APIRouter(prefix="/projects/{project}", tags=["reviews"])


def _item_out(project: Project, item: ReviewItem) -> ReviewItemOut:
    image = f"/projects/{project.id}/images/{item.correction.image_id}"
    return ReviewItemOut.model_validate(
        {
            **item.model_dump(),
            "image_url": f"{image}/file",
            "draft_url": f"{image}/draft",
            "correction_url": f"{image}/correction",
        }
    )


@router.get("/reviews")
def get_reviews(
    project: str,
    caller: CallerDep,
    workspace: WorkspaceDep,
    status: ReviewStatus = ReviewStatus.PENDING,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[ReviewItemOut]:
    """The review queue: current corrections with this review status, oldest first.

    ``pending`` lists only what the caller may review (not its own work, not what
    it already approved). Each entry links the image, the draft and the correction
    for a side-by-side view, and carries earlier reviews (a resubmission shows the
    rejection it answers).
    """
    found = caller.checked_project
    with workspace.sessions() as session:
        items = review_queue(session, found, status=status, reviewer=caller.name, limit=limit)
    return [_item_out(found, item) for item in items]


_FORM_FIELDS = (*ReviewJSON.model_fields, "mask")
"""The multipart fields of a review: the JSON body's, and the edited mask as a PNG file."""


async def _parse(request: Request, max_bytes: int) -> tuple[ReviewJSON, bytes | None]:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/json"):
        try:
            return ReviewJSON.model_validate_json(await request.body()), None
        except ValidationError as exc:
            raise ValidationFailed(f"invalid review JSON: {exc}") from exc
    if not content_type.startswith("multipart/form-data"):
        raise ValidationFailed(
            "send application/json or multipart/form-data (decision, comment, mask), "
            f"not {content_type or 'no content type'!r}"
        )
    async with request.form() as form:
        parts = single_parts(form, _FORM_FIELDS)
        fields: dict[str, Any] = {
            k: v for k, v in parts.items() if k != "mask" and isinstance(v, str) and v != ""
        }
        mask = parts.get("mask")
        data = await mask.read(max_bytes + 1) if isinstance(mask, UploadFile) else None
    if data is not None and len(data) > max_bytes:
        raise ValidationFailed(f"mask is over {max_bytes} bytes")
    try:
        return ReviewJSON.model_validate(fields), data
    except ValidationError as exc:
        raise ValidationFailed(f"invalid review form: {exc}") from exc


def _mask(
    body: ReviewJSON, png: bytes | None, project: Project, size: tuple[int, int], max_px: int
) -> npt.NDArray[np.integer] | None:
    if png is not None:
        return decode_index_png(png, max_pixels=max_px)
    if body.classes is None:
        return None
    return rles_to_schema_mask(body.classes, project.label_schema, size=size)


def _review(
    workspace: Workspace,
    caller: Caller,
    correction: str,
    parsed: tuple[ReviewJSON, bytes | None],
    max_pixels: int,
) -> ReviewOutcome:
    body, png = parsed
    with transaction(workspace.sessions) as session:
        found = get_project(session, caller.checked_project.id)
        row = session.get(CorrectionRow, correction)
        mask = None
        if row is not None and row.project_id == found.id:
            image = get_image(session, found.id, row.image_id)
            mask = _mask(body, png, found, (image.height, image.width), max_pixels)
        request = ReviewRequest(
            decision=body.decision,
            comment=body.comment,
            mask=mask,
            review_time_s=body.review_time_s,
        )
        return review_correction(
            session, workspace.blobs, found, correction, request, reviewer=caller.name
        )


@router.post("/corrections/{correction}/review", response_model=ReviewOutcomeOut)
async def post_review(
    project: str,
    correction: str,
    request: Request,
    caller: CallerDep,
    workspace: WorkspaceDep,
    settings: SettingsDep,
) -> ReviewOutcome:
    """Approve or reject a pending correction (reviewers and managers; never one's own).

    JSON ``{"decision": "approve"|"reject", "comment", "review_time_s", "classes"}`` or
    multipart with the same fields and ``mask`` (index PNG). An edited mask (approve
    only) becomes the image's current correction, attributed to the reviewer. A
    rejection puts the correction first in its annotator's queue.
    """
    parsed = await _parse(request, settings.max_upload_bytes)
    return await run_in_threadpool(
        _review, workspace, caller, correction, parsed, settings.max_image_pixels
    )
