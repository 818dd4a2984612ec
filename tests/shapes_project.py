"""A project of the shapes schema with one uploaded image, and a placeholder model version:
the start of many unit tests."""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from models.registry import NewModelVersion
from prelabel.blobs import BlobStore
from prelabel.database import transaction
from prelabel.drafts import Draft, store_draft
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


def placeholder_version(project_id: str, **fields: Any) -> NewModelVersion:
    """A version to register whose artifacts do not exist, for tests of what needs its
    name, status and lineage only (queues, stored drafts, erasure); ``fields`` override."""
    defaults: dict[str, Any] = {
        "project_id": project_id,
        "parent_version": None,
        "onnx_key": "missing.onnx",
        "onnx_sha256": "0" * 64,
        "checkpoint_key": "missing.pt",
        "checkpoint_sha256": "0" * 64,
        "config": {},
        "metrics": {},
        "trained_on": [],
        "held_out": [],
    }
    return NewModelVersion(**(defaults | fields))


def constant_draft(
    session: Session,
    blobs: BlobStore,
    project: Project,
    image: Image,
    *,
    model_version: str | None,
    confidence: float = 0.5,
) -> Draft:
    """Store a draft of ``image`` that is all background at one ``confidence``."""
    return store_draft(
        session,
        blobs,
        image=image,
        schema=project.label_schema,
        mask=np.zeros((image.height, image.width), np.uint8),
        confidence=np.full((image.height, image.width), confidence, np.float32),
        model_version=model_version,
    )
