"""Inter-annotator agreement picks each annotator's newest counted correction of an image."""

from __future__ import annotations

import numpy as np
import pytest

from prelabel.corrections import record_correction, withdraw_correction
from prelabel.database import transaction
from prelabel.review_metrics import AgreementCache, inter_annotator_agreement
from prelabel.workspace import Workspace
from tests.shapes_project import project_with_image


def _rows(top: int) -> np.ndarray:
    mask = np.zeros((64, 64), np.uint8)
    mask[:top] = 1
    return mask


@pytest.mark.parametrize("cached", [False, True])
def test_withdrawn_corrections_and_reviewer_edits_leave_the_pairs(
    workspace: Workspace, cached: bool
) -> None:
    project, image = project_with_image(workspace, "iaa")
    sent = [("ana", 32, "api"), ("bo", 16, "api"), ("cy", 32, "api"), ("rita", 8, "review")]
    ids = {}
    for annotator, top, source in sent:
        with transaction(workspace.sessions) as session:
            correction = record_correction(
                session, workspace.blobs, project=project, image=image, mask=_rows(top),
                annotator=annotator, source=source, actor=annotator,
            )  # fmt: skip
        ids[annotator] = correction.id
    cache = AgreementCache() if cached else None

    def agreement() -> tuple[int, int, float | None]:
        with workspace.sessions() as session:
            found = inter_annotator_agreement(session, workspace.blobs, project, cache)
        return found.images, found.pairs, found.mean_iou

    # ana-bo, ana-cy, bo-cy; the reviewer's edit is no annotator's opinion.
    assert agreement() == (1, 3, pytest.approx((2 * (16 / 32 + 32 / 48) / 2 + 1.0) / 3))
    with transaction(workspace.sessions) as session:
        withdraw_correction(session, ids["bo"], reason="deleted", actor="test")
    assert agreement() == (1, 1, 1.0)  # ana-cy only
    with transaction(workspace.sessions) as session:
        withdraw_correction(session, ids["cy"], reason="deleted", actor="test")
    assert agreement() == (0, 0, None)  # one annotator left: no pair
