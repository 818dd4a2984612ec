"""``GET /projects/{project}/images/{image}/draft``: the draft, as PNG, RLE JSON or confidence."""

from __future__ import annotations

from enum import StrEnum

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from prelabel.codecs import mask_to_rles
from prelabel.drafts import load_draft_mask
from service.auth import CallerDep
from service.deps import PredictorsDep, WorkspaceDep
from service.drafting import current_draft
from service.schemas import DraftJSON

router = APIRouter(prefix="/projects/{project}/images/{image}", tags=["drafts"])


class DraftFormat(StrEnum):
    PNG = "png"
    JSON = "json"
    CONFIDENCE = "confidence"


@router.get(
    "/draft",
    response_model=DraftJSON,
    responses={
        200: {
            "content": {"image/png": {}},
            "description": "index PNG (png), 8-bit confidence PNG (confidence) or "
            "per-class COCO RLE (json)",
        }
    },
)
def get_draft(
    project: str,
    image: str,
    workspace: WorkspaceDep,
    predictors: PredictorsDep,
    caller: CallerDep,
    format: DraftFormat = DraftFormat.PNG,
) -> Response:
    """The draft of the serving model for the image; stored, so corrections can refer to it.

    Headers ``X-Draft-Id`` and ``X-Model-Version`` (absent before the first model)
    identify it in every format.
    """
    found_project, found_image, draft = current_draft(
        workspace,
        predictors,
        caller.checked_project.id,
        image,
        actor=caller.name,
        served_as=format.value,
    )
    headers = {"X-Draft-Id": draft.id}
    if draft.model_version is not None:
        headers["X-Model-Version"] = draft.model_version
    if format is DraftFormat.JSON:
        mask = load_draft_mask(workspace.blobs, draft)
        rles = mask_to_rles(mask, found_project.label_schema.class_ids)
        body = DraftJSON(
            draft_id=draft.id,
            model_version=draft.model_version,
            width=found_image.width,
            height=found_image.height,
            classes={str(k): v for k, v in rles.items()},
        )
        return JSONResponse(body.model_dump(mode="json"), headers=headers)
    key = draft.mask_key if format is DraftFormat.PNG else draft.confidence_key
    return Response(workspace.blobs.get(key), media_type="image/png", headers=headers)
