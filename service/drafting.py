"""Producing the draft an annotator starts from: stored once per image and model version."""

from __future__ import annotations

import logging
import time

from models.registry import serving_version
from models.serving import make_draft
from prelabel.audit import AuditAction, record_audit
from prelabel.database import transaction
from prelabel.drafts import Draft, latest_draft
from prelabel.images import Image, get_image
from prelabel.projects import Project, get_project
from prelabel.workspace import Workspace
from service.predictors import PredictorCache
from service.telemetry import observe_draft

logger = logging.getLogger(__name__)


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
        serving = serving_version(session, project.id)
        draft = latest_draft(session, image, model_version=serving.version if serving else None)
    precomputed = draft is not None
    if draft is None:
        predictor = predictors.drafter(serving) if serving is not None else None
        version = serving.version if serving else None
        draft = predictors.make_once(
            image.id, version, lambda: make_draft(workspace, project, image, serving, predictor)
        )
    with transaction(workspace.sessions) as session:
        record_audit(
            session,
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
