"""A stored draft is served from the serving version's name alone."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from sqlalchemy import func, select

from models.predictor import Prediction
from models.registry import promote, register_version, serving_version
from models.serving import draft_once
from prelabel.blobs import BlobNotFound
from prelabel.database import transaction
from prelabel.drafts import load_draft_mask
from prelabel.images import load_pixels
from prelabel.tables import DraftClaimRow
from prelabel.workspace import Workspace
from service import drafting
from service.drafting import current_draft
from service.predictors import PredictorCache
from tests.shapes_project import constant_draft, placeholder_version, project_with_image


def test_a_stored_draft_is_served_without_loading_the_version_record(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registry record's JSON grows with the project; a stored draft does not need it
    (nor the artifact, here one that does not exist)."""
    project, image = project_with_image(workspace, "stored")
    with transaction(workspace.sessions) as session:
        trained_on = [f"correction-{i}" for i in range(1000)]
        register_version(session, placeholder_version(project.id, trained_on=trained_on))
        promote(session, project.id, "v1", reason="test")
        stored = constant_draft(session, workspace.blobs, project, image, model_version="v1")

    def no_record(*_: object) -> None:
        raise AssertionError("the full version record was loaded for a stored draft")

    monkeypatch.setattr(drafting, "serving_version", no_record)
    _, _, served = current_draft(
        workspace,
        PredictorCache(workspace.blobs),
        project.name,
        image.id,
        actor="test",
        served_as="png",
    )
    assert served.id == stored.id and served.model_version == "v1"


class _RecordingPredictor:
    """A drafter that answers class 1 everywhere and keeps the pixels it was given."""

    def __init__(self) -> None:
        self.seen: list[npt.NDArray[np.uint8]] = []

    def predict(self, image: npt.NDArray[np.uint8]) -> Prediction:
        self.seen.append(image)
        shape = image.shape[:2]
        return Prediction(np.ones(shape, np.uint8), np.full(shape, 0.75, np.float32))


def test_a_claimed_draft_is_predicted_from_the_stored_image_and_a_failed_read_frees_its_claim(
    workspace: Workspace,
) -> None:
    """The image is read beside the claim's transaction (``draft_once``): the predictor
    gets its decoded pixels, and when reading fails the error reaches the caller and the
    claim goes, so the next request computes at once instead of waiting out the lease."""
    project, image = project_with_image(workspace, "beside")
    with transaction(workspace.sessions) as session:
        register_version(session, placeholder_version(project.id))
        promote(session, project.id, "v1", reason="test")
        serving = serving_version(session, project.id)
    assert serving is not None
    stored_bytes = workspace.blobs.get(image.blob_key)
    predictor = _RecordingPredictor()

    workspace.blobs.delete(image.blob_key)
    with pytest.raises(BlobNotFound):
        draft_once(workspace, project, image, serving, predictor, lease_s=600)
    with transaction(workspace.sessions) as session:
        assert session.scalar(select(func.count()).select_from(DraftClaimRow)) == 0
    workspace.blobs.put(image.blob_key, stored_bytes)
    draft = draft_once(workspace, project, image, serving, predictor, lease_s=600)

    assert len(predictor.seen) == 1
    assert np.array_equal(predictor.seen[0], load_pixels(workspace.blobs, image))
    assert draft.model_version == "v1" and draft.latency_ms > 0
    assert np.all(load_draft_mask(workspace.blobs, draft) == 1)
