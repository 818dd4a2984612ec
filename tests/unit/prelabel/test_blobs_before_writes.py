"""A draft's and a correction's PNGs are stored before their transaction's first write
statement: on SQLite that statement takes the database's one write lock until commit, so
encoding and fsyncing a PNG must not happen while it is held (other writers would queue)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from sqlalchemy import event

from prelabel.blobs import BlobStore
from prelabel.corrections import submit_correction
from prelabel.drafts import store_draft
from prelabel.images import Image, add_image
from prelabel.projects import Project, ProjectSpec, create_project
from prelabel.workspace import Workspace
from tests.synthetic import SHAPES_CLASSES, png_bytes, shapes_sample

WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")


class _Recorder:
    """What the test's transaction did, in order: blob puts and write statements."""

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs
        self.events: list[str] = []

    def put(self, key: str, data: bytes) -> None:
        self.events.append(f"put {key}")
        self.blobs.put(key, data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.blobs, name)

    def statement(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith(WRITES):
            self.events.append(f"sql {statement.split()[0].upper()}")


@pytest.fixture
def recorder(workspace: Workspace) -> Iterator[_Recorder]:
    recording = _Recorder(workspace.blobs)
    event.listen(workspace.engine, "before_cursor_execute", recording.statement)
    yield recording
    event.remove(workspace.engine, "before_cursor_execute", recording.statement)


def _project_with_image(workspace: Workspace) -> tuple[Project, Image]:
    with workspace.sessions() as session, session.begin():
        project = create_project(
            session,
            ProjectSpec.model_validate({"name": "order", "classes": SHAPES_CLASSES}),
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


def _puts_then_writes(events: list[str], puts: int) -> None:
    assert [event.split()[0] for event in events[:puts]] == ["put"] * puts, events
    assert events[puts:] and all(event.startswith("sql") for event in events[puts:]), events


def test_a_draft_stores_its_pngs_before_its_first_write_statement(
    workspace: Workspace, recorder: _Recorder
) -> None:
    project, image = _project_with_image(workspace)
    mask = np.zeros((image.height, image.width), dtype=np.uint8)
    recorder.events.clear()
    with workspace.sessions() as session, session.begin():
        draft = store_draft(
            session,
            recorder,
            image=image,
            schema=project.label_schema,
            mask=mask,
            confidence=np.ones(mask.shape, dtype=np.float32),
            model_version=None,
        )
    _puts_then_writes(recorder.events, 2)
    assert recorder.events[:2] == [f"put {draft.mask_key}", f"put {draft.confidence_key}"]
    assert workspace.blobs.get(draft.mask_key)


def test_a_correction_stores_its_png_before_its_first_write_statement(
    workspace: Workspace, recorder: _Recorder
) -> None:
    project, image = _project_with_image(workspace)
    mask = np.zeros((image.height, image.width), dtype=np.uint8)
    recorder.events.clear()
    with workspace.sessions() as session, session.begin():
        correction = submit_correction(
            session, recorder, project=project, image=image, mask=mask, annotator="ann"
        )
    _puts_then_writes(recorder.events, 1)
    assert recorder.events[0] == f"put {correction.mask_key}"
