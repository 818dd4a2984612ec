"""``POST /projects/{project}/images/{image}/refine``: a draft refined from clicks on one class.

Role at merge with [access]: annotator (it records clicks, as a correction does).
"""

from __future__ import annotations

from enum import StrEnum

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from prelabel.codecs import encode_schema_mask, mask_to_rles
from prelabel.refinement import Clicks
from prelabel.refinements import resolve_class
from prelabel.workspace import Workspace
from service.auth import Caller, CallerDep
from service.deps import PredictorsDep, WorkspaceDep
from service.predictors import PredictorCache
from service.refining import RefineOutcome, refine_stored_image
from service.schemas import RefinedJSON, RefineRequest

REFINE_SOURCE = "api"
"""``source`` of the refinements made through this route."""

router = APIRouter(prefix="/projects/{project}/images/{image}", tags=["refine"])


class RefineFormat(StrEnum):
    PNG = "png"
    JSON = "json"


def _refine(
    workspace: Workspace,
    predictors: PredictorCache,
    caller: Caller,
    image: str,
    body: RefineRequest,
) -> RefineOutcome:
    project = caller.checked_project.id
    schema = caller.checked_project.label_schema
    class_id = resolve_class(schema, class_id=body.class_id, label=body.label)
    clicks = Clicks(positive=body.positive, negative=body.negative, box=body.box)
    return refine_stored_image(
        workspace,
        predictors,
        project_ref=project,
        image_id=image,
        class_id=class_id,
        clicks=clicks,
        base=body.base,
        source=REFINE_SOURCE,
        actor=caller.name,
    )


@router.post(
    "/refine",
    response_model=RefinedJSON,
    responses={
        200: {
            "content": {"image/png": {}},
            "description": "index PNG of the whole refined mask (png) or per-class COCO RLE (json)",
        }
    },
)
async def refine(
    project: str,
    image: str,
    body: RefineRequest,
    workspace: WorkspaceDep,
    predictors: PredictorsDep,
    caller: CallerDep,
    format: RefineFormat = RefineFormat.PNG,
) -> Response:
    """Redraw one class of the image from positive/negative clicks and an optional box.

    Answers the whole refined mask in the formats of ``GET …/draft``; headers
    ``X-Refine-Method`` (``model``: the serving version's click model; ``grabcut``: the
    training-free fallback, before a project has a click model), ``X-Model-Version``
    (of the base draft, absent before the first model), ``X-Draft-Id`` (the draft
    the refinement started from, if any) and ``X-Refinement-Id``. The call is recorded
    with its clicks: the next correction of the image counts them.
    """
    outcome = await run_in_threadpool(_refine, workspace, predictors, caller, image, body)
    refinement = outcome.refinement
    headers = {"X-Refine-Method": refinement.method.value, "X-Refinement-Id": refinement.id}
    if refinement.draft_id is not None:
        headers["X-Draft-Id"] = refinement.draft_id
    if refinement.model_version is not None:
        headers["X-Model-Version"] = refinement.model_version
    schema = outcome.project.label_schema
    if format is RefineFormat.JSON:
        rles = mask_to_rles(outcome.mask, schema.class_ids)
        answer = RefinedJSON(
            refinement_id=refinement.id,
            draft_id=refinement.draft_id,
            model_version=refinement.model_version,
            method=refinement.method.value,
            base=refinement.base.value,
            clicks=refinement.clicks.count,
            width=outcome.image.width,
            height=outcome.image.height,
            classes={str(k): v for k, v in rles.items()},
        )
        return JSONResponse(answer.model_dump(mode="json"), headers=headers)
    return Response(
        encode_schema_mask(outcome.mask, schema), media_type="image/png", headers=headers
    )
