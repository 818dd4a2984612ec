"""Label Studio interactive pre-annotations: ``/predict`` with smart keypoints or a rectangle.

Called by the ``/predict`` handler of ``service.integrations.labelstudio`` when
``params.context.result`` holds smart regions: the task's image (fetched and
stored like for drafts) is refined from the serving version's draft for the
regions' label, and the answer is one ``brushlabels`` region of that label. The
call is recorded like ``POST …/refine`` (source ``labelstudio``), so the
annotation that follows counts its clicks.
"""

from __future__ import annotations

import logging

from prelabel.images import Image
from prelabel.integrations.labelstudio import (
    LabelMapping,
    SmartRegion,
    TaskPrediction,
    refined_region,
    smart_class,
    smart_clicks,
)
from prelabel.projects import get_project
from prelabel.workspace import Workspace
from service.integrations.labelstudio_schemas import PredictOut
from service.predictors import PredictorCache
from service.refining import refine_stored_image

logger = logging.getLogger(__name__)

LABELSTUDIO_SOURCE = "labelstudio"
"""``source`` of the refinements recorded from Label Studio."""


def predict_interactive(
    workspace: Workspace,
    predictors: PredictorCache,
    image: Image,
    mapping: LabelMapping,
    regions: list[SmartRegion],
    actor: str,
) -> PredictOut:
    """One refined brush region for the smart regions' label, as Label Studio's answer.

    Raises:
        ValidationFailed: no smart keypoint or rectangle, several labels, a coordinate
            outside the image (422).
        SchemaError: a label that names no class, or a class without a brush label (422).
    """
    label, clicks = smart_clicks(regions, height=image.height, width=image.width)
    with workspace.sessions() as session:
        schema = get_project(session, image.project_id).label_schema
    class_id = smart_class(label, mapping, schema)
    outcome = refine_stored_image(
        workspace,
        predictors,
        project_ref=image.project_id,
        image_id=image.id,
        class_id=class_id,
        clicks=clicks,
        base="draft",
        source=LABELSTUDIO_SOURCE,
        actor=actor,
    )
    refinement = outcome.refinement
    region = refined_region(
        outcome.mask, refinement.class_id, mapping=mapping, region_id=refinement.id[:12]
    )
    version = refinement.model_version or "none"
    logger.info(
        "Label Studio interactive call on image %s: class %d, %d clicks, refinement %s",
        image.id,
        refinement.class_id,
        clicks.count,
        refinement.id,
    )
    return PredictOut(
        results=[TaskPrediction(result=[region], score=1.0, model_version=version)],
        model_version=version,
    )
