"""CVAT adapter: an interactor function per class, refining the project's draft from clicks.

``GET /cvat/projects/{project}/interactor.yaml?label=<class>`` is the nuclio
``function.yaml`` (``type: interactor``) that forwards CVAT's calls to
``POST /cvat/projects/{project}/interactor/{label}/invoke``, like the detector
function of ``service.integrations.cvat``. CVAT sends no label to an interactor,
so each function stands for one class: deploy one per class to click with.

Role at merge with [access]: annotator (as ``POST …/refine``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import yaml
from fastapi import APIRouter, Request
from fastapi.responses import Response

from models.registry import serving_version
from prelabel.codecs import decode_image
from prelabel.drafts import empty_draft
from prelabel.errors import ImageTooLarge, ValidationFailed
from prelabel.images import find_image_by_sha256
from prelabel.integrations.cvat_interactor import (
    InteractorAnswer,
    InteractorRequest,
    interactor_answer,
)
from prelabel.projects import Project
from prelabel.refinements import resolve_class
from prelabel.schema import LabelSchema, class_id_in_key
from service.auth import CallerDep
from service.deps import PredictorsDep, SettingsDep, WorkspaceDep
from service.integrations.cvat import _function_config
from service.refining import choose_refiner, refine_stored_image

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/cvat/projects/{project}", tags=["cvat"])

INVOKE_ROUTE = "invoke_cvat_interactor"

CVAT_SOURCE = "cvat"
"""``source`` of the refinements recorded from CVAT."""


def _class_of(schema: LabelSchema, label: str | None) -> int:
    """The class named by ``label`` (a class name, translation or id); without one, the
    project's only foreground class."""
    if label is None:
        foreground = [c for c in schema.classes if c.id != schema.background]
        if len(foreground) != 1:
            names = sorted(c.name for c in foreground)
            raise ValidationFailed(
                f"the project has {len(foreground)} classes to click on: choose one with "
                f"?label=<name> from {names}"
            )
        return foreground[0].id
    class_id = class_id_in_key(label)
    if class_id is not None:
        return resolve_class(schema, class_id=class_id, label=None)
    return resolve_class(schema, class_id=None, label=label)


@router.post("/interactor/{label}/invoke", name=INVOKE_ROUTE)
def invoke_interactor(
    project: str,
    label: str,
    body: InteractorRequest,
    workspace: WorkspaceDep,
    predictors: PredictorsDep,
    settings: SettingsDep,
    caller: CallerDep,
) -> InteractorAnswer:
    """CVAT's interactor call: the class ``label`` redrawn from the clicks, as mask and polygon.

    The refinement starts from the serving model's draft. An image the project
    already stores (same bytes) uses its stored draft and the call is recorded
    like ``POST …/refine`` (its clicks count for the next correction); any other
    image is predicted now and nothing is stored.

    Raises:
        ProjectNotFound: No project has this id or name (404).
        SchemaError: ``label`` names no class (422).
        ValidationFailed: the background class, no click, or a click outside the image (422).
        CodecError: ``image`` is not base64 or not an image (422).
        ImageTooLarge: The image is over the byte or pixel limit (413).
    """
    found = caller.checked_project
    with workspace.sessions() as session:
        serving = serving_version(session, found.id)
    schema = found.label_schema
    class_id = _class_of(schema, label)
    data = body.image_bytes()
    if len(data) > settings.max_upload_bytes:
        raise ImageTooLarge(f"image is {len(data)} bytes, over {settings.max_upload_bytes}")
    pixels = decode_image(data, max_pixels=settings.max_image_pixels)
    clicks = body.clicks()
    clicks.check(pixels.shape[0], pixels.shape[1])
    with workspace.sessions() as session:
        stored = find_image_by_sha256(session, found.id, hashlib.sha256(data).hexdigest())
    if stored is not None:
        outcome = refine_stored_image(
            workspace,
            predictors,
            project_ref=found.id,
            image_id=stored.id,
            class_id=class_id,
            clicks=clicks,
            base="draft",
            source=CVAT_SOURCE,
            actor=caller.name,
        )
        mask = outcome.mask
    else:
        if serving is None:
            base, _ = empty_draft(schema, pixels.shape[0], pixels.shape[1])
        else:
            base = predictors.get(serving).predict(pixels).mask
        refiner = choose_refiner(predictors, serving, clicks)
        mask = refiner(pixels, base, class_id, clicks, background=schema.background).mask
    logger.info(
        "cvat interactor call for project %s class %d: %d clicks (stored image: %s)",
        found.id,
        class_id,
        clicks.count,
        stored.id if stored else None,
    )
    return interactor_answer(mask == class_id)


@router.get(
    "/interactor.yaml",
    response_class=Response,
    responses={200: {"content": {"text/yaml": {}}}},
)
def get_interactor_yaml(
    project: str, request: Request, caller: CallerDep, label: str | None = None
) -> Response:
    """The nuclio ``function.yaml`` of an interactor that redraws one class from clicks.

    ``label`` (a class name or id) is the class; it may be left out when the project
    has one foreground class. The function declares ``type: interactor``,
    ``min_pos_points: 1``, ``min_neg_points: 0`` (a box may start it too) and forwards
    every call to prelabel, whose URL is in ``PRELABEL_INVOKE_URL``; deploy it with
    ``nuctl deploy --file interactor.yaml``.
    """
    found = caller.checked_project
    class_id = _class_of(found.label_schema, label)
    invoke_url = str(request.url_for(INVOKE_ROUTE, project=found.id, label=str(class_id)))
    text = yaml.safe_dump(_interactor_config(found, class_id, invoke_url), sort_keys=False)
    return Response(text, media_type="text/yaml")


def _interactor_config(project: Project, class_id: int, invoke_url: str) -> dict[str, Any]:
    """The detector's function config, turned into a one-class interactor."""
    config = _function_config(project, invoke_url)
    label = project.label_schema.class_by_id(class_id)
    name = f"{config['metadata']['name']}-{class_id}-interactor"[:63].rstrip("-")
    config["metadata"]["name"] = name
    config["metadata"]["annotations"] = {
        "name": f"prelabel: {project.name} / {label.name}",
        "type": "interactor",
        "framework": "onnxruntime",
        "spec": json.dumps([{"id": label.id, "name": label.name, "type": "mask"}], indent=2),
        "min_pos_points": 1,
        "min_neg_points": 0,
        "startswith_box_optional": True,
        "help_message": (
            f"Click on {label.name} (Ctrl/right click: not {label.name}); prelabel redraws "
            "the class from the project's draft"
        ),
    }
    config["spec"]["description"] = (
        f"prelabel refinement of {label.name!r} in project {project.name!r} (forwarded)"
    )
    return config
