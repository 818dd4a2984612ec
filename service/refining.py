"""Refining an image from clicks in the service: the current draft as base, then the core rule.

Shared by ``POST …/refine`` and the annotation-tool adapters (Label Studio smart
regions, CVAT interactor), so that every path records its clicks the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from models.registry import ModelRecord, serving_version
from prelabel.database import transaction
from prelabel.images import Image
from prelabel.projects import Project
from prelabel.refinement import Clicks, Refiner, refine_class
from prelabel.refinements import BaseKind, Refinement, refine_image, starting_mask
from prelabel.workspace import Workspace
from service.drafting import current_draft
from service.predictors import PredictorCache
from service.telemetry import observe_refinement


@dataclass(frozen=True, eq=False)
class RefineOutcome:
    """What a refinement call answers.

    Attributes:
        project: The project.
        image: The image.
        mask: ``(H, W)`` class ids (``schema.mask_dtype``): the whole refined mask.
        refinement: The recorded call (method, draft, model version).
    """

    project: Project
    image: Image
    mask: npt.NDArray[np.integer]
    refinement: Refinement


def refine_stored_image(
    workspace: Workspace,
    predictors: PredictorCache,
    *,
    project_ref: str,
    image_id: str,
    class_id: int,
    clicks: Clicks,
    base: str,
    source: str,
    actor: str,
) -> RefineOutcome:
    """Refine a stored image's class from ``base`` (``draft``, ``correction`` or a draft id).

    The serving version's draft is made first if the image has none yet, so a
    ``draft`` base is what ``GET …/draft`` answers. The serving version's click model
    refines when it has one and the request has a click (:func:`choose_refiner`);
    otherwise the GrabCut fallback does.

    Raises:
        ProjectNotFound, ImageNotFound, DraftNotFound, CorrectionNotFound: lookups (404).
        SchemaError, ValidationFailed: a class or clicks the image cannot take (422).
    """
    project, image, draft = current_draft(
        workspace, predictors, project_ref, image_id, actor=actor, served_as="refine"
    )
    with workspace.sessions() as session:
        serving = serving_version(session, project.id)
    refiner = choose_refiner(predictors, serving, clicks)
    with transaction(workspace.sessions) as session:
        current = draft if base == BaseKind.DRAFT else None
        start = starting_mask(session, project, image, base, current)
        mask, refinement = refine_image(
            session,
            workspace.blobs,
            project=project,
            image=image,
            class_id=class_id,
            clicks=clicks,
            start=start,
            source=source,
            actor=actor,
            refiner=refiner,
        )
    observe_refinement(
        project.name,
        method=refinement.method.value,
        source=source,
        clicks=clicks.count,
        ms=refinement.latency_ms,
    )
    return RefineOutcome(project=project, image=image, mask=mask, refinement=refinement)


def choose_refiner(
    predictors: PredictorCache, serving: ModelRecord | None, clicks: Clicks
) -> Refiner:
    """The serving version's click model if it has one and there is a click, else GrabCut.

    A box alone stays with GrabCut: the click model's guidance holds clicks, not boxes.
    """
    if serving is None or clicks.count == 0:
        return refine_class
    model = predictors.click_model(serving)
    return model if model is not None else refine_class
