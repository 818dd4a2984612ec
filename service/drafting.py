"""Producing the draft an annotator starts from: stored once per image and model version."""

from __future__ import annotations

import logging
import time

from models.registry import ModelRecord, serving_version
from prelabel.database import transaction
from prelabel.drafts import Draft, empty_draft, latest_draft, store_draft
from prelabel.images import Image, get_image, load_pixels
from prelabel.projects import Project, get_project
from prelabel.workspace import Workspace
from service.predictors import PredictorCache

logger = logging.getLogger(__name__)


def _predict_and_store(
    workspace: Workspace,
    project: Project,
    image: Image,
    serving: ModelRecord | None,
    predictors: PredictorCache,
) -> Draft:
    schema = project.label_schema
    started = time.perf_counter()
    if serving is None:
        mask, confidence = empty_draft(schema, image.height, image.width)
    else:
        prediction = predictors.get(serving).predict(load_pixels(workspace.blobs, image))
        mask, confidence = prediction.mask, prediction.confidence
    latency_ms = (time.perf_counter() - started) * 1000
    with transaction(workspace.sessions) as session:
        return store_draft(
            session,
            workspace.blobs,
            image=image,
            schema=schema,
            mask=mask,
            confidence=confidence,
            model_version=serving.version if serving else None,
            latency_ms=latency_ms,
        )


def current_draft(
    workspace: Workspace, predictors: PredictorCache, project_ref: str, image_id: str
) -> tuple[Project, Image, Draft]:
    """The draft of the serving version for an image, made and stored on first request.

    Before the project has a model, the draft is empty (all background) with
    ``model_version`` None: the annotator labels from scratch.
    """
    with workspace.sessions() as session:
        project = get_project(session, project_ref)
        image = get_image(session, project.id, image_id)
        serving = serving_version(session, project.id)
        draft = latest_draft(session, image, model_version=serving.version if serving else None)
    if draft is None:
        draft = _predict_and_store(workspace, project, image, serving, predictors)
    return project, image, draft
