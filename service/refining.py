"""Refining an image from clicks in the service: the current draft as base, then the core rule.

Shared by ``POST …/refine`` and the annotation-tool adapters (Label Studio smart
regions, CVAT interactor), so that every path records its clicks the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from prelabel.database import transaction
from prelabel.images import Image
from prelabel.projects import Project
from prelabel.refinement import Clicks
from prelabel.refinements import BaseKind, Refinement, refine_image, starting_mask
from prelabel.workspace import Workspace
from service.drafting import current_draft
from service.predictors import PredictorCache


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
    ``draft`` base is what ``GET …/draft`` answers.

    Raises:
        ProjectNotFound, ImageNotFound, DraftNotFound, CorrectionNotFound: lookups (404).
        SchemaError, ValidationFailed: a class or clicks the image cannot take (422).
    """
    project, image, draft = current_draft(
        workspace, predictors, project_ref, image_id, actor=actor, served_as="refine"
    )
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
        )
    return RefineOutcome(project=project, image=image, mask=mask, refinement=refinement)
