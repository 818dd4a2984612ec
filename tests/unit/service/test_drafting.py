"""A stored draft is served from the serving version's name alone."""

from __future__ import annotations

import pytest

from models.registry import promote, register_version
from prelabel.database import transaction
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
