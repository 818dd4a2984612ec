"""Active ordering: which unlabelled images come next, by strategy."""

from __future__ import annotations

import pytest

from models.registry import promote, register_version
from prelabel.corrections import submit_correction
from prelabel.images import Image, add_image
from prelabel.ordering import Strategy, next_images
from prelabel.projects import Project, ProjectSpec, create_project
from prelabel.workspace import Workspace
from tests.shapes_project import constant_draft, placeholder_version
from tests.synthetic import SHAPES_CLASSES, png_bytes, shapes_sample


def _setup(workspace: Workspace, n: int) -> tuple[Project, list[Image]]:
    with workspace.sessions() as session, session.begin():
        project = create_project(
            session,
            ProjectSpec.model_validate({"name": "order", "classes": SHAPES_CLASSES}),
            actor="test",
        )
        images = [
            add_image(
                session,
                workspace.blobs,
                project_id=project.id,
                filename=f"{i}.png",
                data=png_bytes(shapes_sample(i)[0]),
                max_pixels=10**6,
                actor="test",
            )
            for i in range(n)
        ]
    return project, images


def _serve(workspace: Workspace, project: Project, version: str) -> None:
    with workspace.sessions() as session, session.begin():
        record = register_version(session, placeholder_version(project.id))
        assert record.version == version
        promote(session, project.id, version, reason="test")


def _draft(
    workspace: Workspace, project: Project, image: Image, confidence: float, version: str | None
) -> str:
    with workspace.sessions() as session, session.begin():
        draft = constant_draft(
            session, workspace.blobs, project, image, model_version=version, confidence=confidence
        )
        return draft.id


def _order(
    workspace: Workspace, project: Project, strategy: Strategy, limit: int = 10, seed: int = 0
) -> list[str]:
    with workspace.sessions() as session:
        return [
            i.image.filename
            for i in next_images(session, project.id, strategy=strategy, limit=limit, seed=seed)
        ]


def test_sequential_is_upload_order_without_corrected_images(workspace: Workspace) -> None:
    project, images = _setup(workspace, 4)
    with workspace.sessions() as session, session.begin():
        submit_correction(
            session,
            workspace.blobs,
            project=project,
            image=images[1],
            mask=shapes_sample(1)[1],
            annotator="a",
        )
    assert _order(workspace, project, Strategy.SEQUENTIAL) == ["0.png", "2.png", "3.png"]
    assert _order(workspace, project, Strategy.SEQUENTIAL, limit=2) == ["0.png", "2.png"]


def test_random_is_a_seeded_permutation(workspace: Workspace) -> None:
    project, _ = _setup(workspace, 12)
    first = _order(workspace, project, Strategy.RANDOM, limit=12, seed=1)
    assert first == _order(workspace, project, Strategy.RANDOM, limit=12, seed=1)
    assert sorted(first) == sorted(f"{i}.png" for i in range(12))
    assert first != _order(workspace, project, Strategy.RANDOM, limit=12, seed=2)


def test_uncertainty_ranks_serving_drafts_least_confident_first(workspace: Workspace) -> None:
    project, images = _setup(workspace, 4)
    _serve(workspace, project, "v1")
    confidences = {0: 0.9, 1: 0.4, 3: 0.7}
    draft_ids = {i: _draft(workspace, project, images[i], c, "v1") for i, c in confidences.items()}
    _draft(workspace, project, images[2], 0.01, None)  # an old empty draft does not count
    with workspace.sessions() as session:
        items = next_images(session, project.id, strategy=Strategy.UNCERTAINTY, limit=10)
    assert [i.image.filename for i in items] == ["1.png", "3.png", "0.png", "2.png"]
    assert [i.uncertainty for i in items[:3]] == pytest.approx([0.6, 0.3, 0.1], abs=1 / 255)
    assert items[0].draft_id == draft_ids[1] and items[0].model_version == "v1"
    assert items[3].uncertainty is None and items[3].draft_id is None


def test_limit_must_be_positive(workspace: Workspace) -> None:
    project, _ = _setup(workspace, 1)
    with workspace.sessions() as session, pytest.raises(ValueError, match="limit"):
        next_images(session, project.id, strategy=Strategy.RANDOM, limit=0)


@pytest.mark.parametrize("strategy", [Strategy.RANDOM, Strategy.SEQUENTIAL])
def test_random_and_sequential_entries_carry_the_serving_versions_newest_draft(
    workspace: Workspace, strategy: Strategy
) -> None:
    project, images = _setup(workspace, 5)
    _serve(workspace, project, "v1")
    _draft(workspace, project, images[0], 0.5, "v1")
    newest = {i: _draft(workspace, project, images[i], 0.8, "v1") for i in (0, 2)}
    _draft(workspace, project, images[3], 0.8, None)  # an empty draft is not the serving one
    with workspace.sessions() as session:
        items = next_images(session, project.id, strategy=strategy, limit=5, seed=4)
    assert len(items) == 5
    for item in items:
        index = int(item.image.filename.split(".")[0])
        assert item.draft_id == newest.get(index)
        assert item.model_version == ("v1" if index in newest else None)
        assert item.uncertainty == (pytest.approx(0.2, abs=1 / 255) if index in newest else None)
