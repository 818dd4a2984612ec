"""A stored draft is served from the serving version's name alone."""

from __future__ import annotations

import numpy as np
import pytest

from models.registry import NewModelVersion, promote, register_version
from prelabel.drafts import store_draft
from prelabel.images import add_image
from prelabel.projects import ProjectSpec, create_project
from prelabel.workspace import Workspace
from service import drafting
from service.drafting import current_draft
from service.predictors import PredictorCache
from tests.synthetic import SHAPES_CLASSES, png_bytes, shapes_sample


def test_a_stored_draft_is_served_without_loading_the_version_record(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registry record's JSON grows with the project; a stored draft does not need it
    (nor the artifact, here one that does not exist)."""
    with workspace.sessions() as session, session.begin():
        project = create_project(
            session,
            ProjectSpec.model_validate({"name": "stored", "classes": SHAPES_CLASSES}),
            actor="test",
        )
        image = add_image(
            session,
            workspace.blobs,
            project_id=project.id,
            filename="0.png",
            data=png_bytes(shapes_sample(0)[0]),
            max_pixels=10**6,
            actor="test",
        )
        register_version(
            session,
            NewModelVersion(
                project_id=project.id,
                parent_version=None,
                onnx_key="missing.onnx",
                onnx_sha256="0" * 64,
                checkpoint_key="missing.pt",
                checkpoint_sha256="0" * 64,
                config={},
                metrics={},
                trained_on=[f"correction-{i}" for i in range(1000)],
                held_out=[],
            ),
        )
        promote(session, project.id, "v1", reason="test")
        stored = store_draft(
            session,
            workspace.blobs,
            image=image,
            schema=project.label_schema,
            mask=np.zeros((image.height, image.width), np.uint8),
            confidence=np.full((image.height, image.width), 0.5, np.float32),
            model_version="v1",
        )

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
