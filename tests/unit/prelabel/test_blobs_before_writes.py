"""A draft's and a correction's PNGs are stored before their transaction's first write
statement: on SQLite that statement takes the database's one write lock until commit, so
encoding and fsyncing a PNG must not happen while it is held (other writers would queue)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from sqlalchemy import event

from prelabel import drafts
from prelabel.blobs import BlobStore
from prelabel.corrections import submit_correction
from prelabel.drafts import store_draft
from prelabel.images import Image
from prelabel.projects import Project
from prelabel.workspace import Workspace
from tests.shapes_project import project_with_image

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


def _start(
    workspace: Workspace, recorder: _Recorder
) -> tuple[Project, Image, npt.NDArray[np.uint8]]:
    """A project with an image, an all-background mask of its size; nothing recorded yet."""
    project, image = project_with_image(workspace, "order")
    recorder.events.clear()
    return project, image, np.zeros((image.height, image.width), dtype=np.uint8)


def _puts_then_writes(events: list[str], puts: int) -> None:
    assert [event.split()[0] for event in events[:puts]] == ["put"] * puts, events
    assert events[puts:] and all(event.startswith("sql") for event in events[puts:]), events


@pytest.mark.parametrize("slow_mask", [False, True], ids=["as-is", "mask-stored-last"])
def test_a_draft_stores_its_pngs_before_its_first_write_statement(
    workspace: Workspace, recorder: _Recorder, monkeypatch: pytest.MonkeyPatch, slow_mask: bool
) -> None:
    project, image, mask = _start(workspace, recorder)
    if slow_mask:  # the mask's thread finishes after the confidence map is stored
        encode = drafts.encode_schema_mask

        def slow_encode(*args: Any, **kwargs: Any) -> bytes:
            time.sleep(0.3)
            return encode(*args, **kwargs)

        monkeypatch.setattr(drafts, "encode_schema_mask", slow_encode)
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
    # The mask is stored beside the confidence map (a second thread): either may come first.
    assert sorted(recorder.events[:2]) == sorted(
        [f"put {draft.mask_key}", f"put {draft.confidence_key}"]
    )
    assert workspace.blobs.get(draft.mask_key)


def test_a_correction_stores_its_png_before_its_first_write_statement(
    workspace: Workspace, recorder: _Recorder
) -> None:
    project, image, mask = _start(workspace, recorder)
    with workspace.sessions() as session, session.begin():
        correction = submit_correction(
            session, recorder, project=project, image=image, mask=mask, annotator="ann"
        )
    _puts_then_writes(recorder.events, 1)
    assert recorder.events[0] == f"put {correction.mask_key}"
