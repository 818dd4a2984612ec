"""Producing the draft an annotator starts from: stored once per image and model version."""

from __future__ import annotations

import logging
import time

from models.registry import ModelRecord, serving_version
from models.serving import draft_once, make_draft
from prelabel.audit import AuditAction
from prelabel.drafts import Draft, latest_draft
from prelabel.images import Image, get_image
from prelabel.model_versions import serving_version_name
from prelabel.projects import Project, get_project
from prelabel.workspace import Workspace
from service.predictors import PredictorCache
from service.telemetry import observe_draft

logger = logging.getLogger(__name__)


def _make_draft(
    workspace: Workspace,
    predictors: PredictorCache,
    project: Project,
    image: Image,
    serving: ModelRecord | None,
) -> Draft:
    if serving is None:
        return predictors.make_once(
            image.id, None, lambda: make_draft(workspace, project, image, None, None)
        )
    # In this process one thread computes (make_once); across processes the draft's claim
    # in the database makes a bulk job or another replica's request the one that computes,
    # and this request waits for its result (draft_once).
    predictor = predictors.drafter(serving)
    return predictors.make_once(
        image.id,
        serving.version,
        lambda: draft_once(
            workspace, project, image, serving, predictor, lease_s=predictors.lease_s
        ),
    )


def current_draft(
    workspace: Workspace,
    predictors: PredictorCache,
    project_ref: str,
    image_id: str,
    *,
    actor: str,
    served_as: str,
) -> tuple[Project, Image, Draft]:
    """The draft of the serving version for an image, made and stored on first request.

    Before the project has a model, the draft is empty (all background) with
    ``model_version`` None: the annotator labels from scratch. Serving it to
    ``actor`` is audited and counted (``served_as``: the format or the path that serves it).
    """
    started = time.perf_counter()
    with workspace.sessions() as session:
        project = get_project(session, project_ref)
        image = get_image(session, project.id, image_id)
        version = serving_version_name(session, project.id)
        draft = latest_draft(session, image, model_version=version)
        # The full record (config, artifacts) only when the draft is to be made.
        serving = serving_version(session, project.id) if draft is None else None
    precomputed = draft is not None
    if draft is None:
        draft = _make_draft(workspace, predictors, project, image, serving)
    workspace.deferred.audit(
        project.id,
        actor=actor,
        action=AuditAction.DRAFT_SERVED,
        image_id=image.id,
        details={"draft_id": draft.id, "model_version": draft.model_version},
    )
    observe_draft(
        project.name,
        draft,
        served_as=served_as,
        precomputed=precomputed,
        seconds=time.perf_counter() - started,
    )
    return project, image, draft
