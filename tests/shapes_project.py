"""A project of the shapes schema with one uploaded image: the start of many unit tests."""

from __future__ import annotations

from prelabel.database import transaction
from prelabel.images import Image, add_image
from prelabel.projects import Project, ProjectSpec, create_project
from prelabel.workspace import Workspace
from tests.synthetic import SHAPES_CLASSES, png_bytes, shapes_sample


def project_with_image(workspace: Workspace, name: str) -> tuple[Project, Image]:
    """Create project ``name`` (shapes classes) and upload shapes sample 0 as ``a.png``."""
    with transaction(workspace.sessions) as session:
        project = create_project(
            session,
            ProjectSpec.model_validate({"name": name, "classes": SHAPES_CLASSES}),
            actor="test",
        )
        image = add_image(
            session,
            workspace.blobs,
            project_id=project.id,
            filename="a.png",
            data=png_bytes(shapes_sample(0)[0]),
            max_pixels=10**6,
            actor="test",
        )
    return project, image
