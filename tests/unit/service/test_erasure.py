"""Erasure leaves nothing of an image behind but audit entries (ids only)."""

from __future__ import annotations

import base64
import hashlib

from fastapi.testclient import TestClient
from sqlalchemy import JSON, String, Text, select

from models.registry import register_version
from prelabel.database import transaction
from prelabel.images import get_image
from prelabel.projects import get_project
from prelabel.tables import AuditEventRow, Base
from prelabel.workspace import Workspace
from tests.shapes_project import constant_draft, placeholder_version
from tests.synthetic import png_bytes
from tests.unit.service.test_labelstudio import (  # noqa: F401  (fixtures)
    IMAGES,
    _annotation_webhook,
    _image_id,
    _setup,
    _workspace,
    ls,
    make_client,
)

PROJECT = "labelstudio-1"


def _drafts_of_two_versions(workspace: Workspace, image_id: str) -> None:
    with transaction(workspace.sessions) as session:
        project = get_project(session, PROJECT)
        image = get_image(session, project.id, image_id)
        for version in ("v1", "v2"):
            constant_draft(
                session, workspace.blobs, project, image, model_version=version, confidence=0.9
            )


def _versions_with_lineage(workspace: Workspace, trained_on: list[str], image_id: str) -> None:
    with transaction(workspace.sessions) as session:
        project_id = get_project(session, PROJECT).id
        for corrections in (trained_on, []):
            held_out_metrics = {"miou": 0.5, "per_image": {image_id: 0.5, "x": 0.4}}
            version = placeholder_version(
                project_id,
                metrics={"held_out": held_out_metrics},
                trained_on=corrections,
                held_out=[image_id, "x"],
            )
            register_version(session, version)


def _text_cells(workspace: Workspace) -> list[tuple[str, str, str]]:
    """(table, column, text) of every string and JSON value in the database."""
    cells = []
    with workspace.sessions() as session:
        for table in Base.metadata.sorted_tables:
            columns = [c for c in table.columns if isinstance(c.type, String | Text | JSON)]
            for row in session.execute(select(*columns)) if columns else []:
                for column, value in zip(columns, row, strict=True):
                    if value is not None:
                        cells.append((table.name, column.name, str(value)))
    return cells


def test_erasing_an_image_leaves_only_audit_entries(ls: TestClient) -> None:  # noqa: F811
    workspace = _workspace(ls)
    assert _setup(ls).status_code == 200
    data = png_bytes(IMAGES[0][0])
    event = _annotation_webhook("ANNOTATION_CREATED", 7, 0, IMAGES[0][1])
    event["task"]["data"]["image"] = "data:image/png;base64," + base64.b64encode(data).decode()
    assert ls.post("/labelstudio/webhook", json=event).status_code == 200
    erased = _image_id(ls, "labelstudio-task-0")
    kept = ls.post(
        f"/projects/{PROJECT}/images",
        files=[("files", ("kept.png", png_bytes(IMAGES[1][0]), "image/png"))],
    ).json()["images"][0]["id"]
    image_path = f"/projects/{PROJECT}/images/{erased}"
    again = ls.put(f"{image_path}/correction", json={"classes": {}})  # history: two corrections
    assert again.status_code == 200, again.text
    assert ls.get(f"{image_path}/file").content == data  # a read, audited
    _drafts_of_two_versions(workspace, erased)
    corrections = [c["id"] for c in ls.get(f"{image_path}/corrections").json()]
    assert len(corrections) == 2
    _versions_with_lineage(workspace, corrections[:1], erased)

    answer = ls.delete(image_path)

    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "image_id": erased,
        "corrections": 2,
        "drafts": 2,
        "integration_events": 1,
        "trained_on_erased": ["v1"],
    }
    models = {m["version"]: m for m in ls.get(f"/projects/{PROJECT}/models").json()}
    assert (models["v1"]["trained_on_erased"], models["v2"]["trained_on_erased"]) == (True, False)
    assert ls.get(image_path).status_code == 404
    assert [i["id"] for i in ls.get(f"/projects/{PROJECT}/images").json()] == [kept]
    secrets = {erased, hashlib.sha256(data).hexdigest(), *corrections}
    secrets.add(base64.b64encode(data).decode()[:40])
    leftovers = [
        (table, column)
        for table, column, text in _text_cells(workspace)
        if table != AuditEventRow.__tablename__ and any(s in text for s in secrets)
    ]
    assert leftovers == []
    blob_root = workspace.blobs.root  # type: ignore[attr-defined]
    for blob in (p for p in blob_root.rglob("*") if p.is_file()):
        content = blob.read_bytes()
        assert not any(s in str(blob) for s in secrets), blob
        assert not any(s.encode() in content for s in secrets), blob
        assert content != data, blob
    workspace.deferred.flush(workspace.sessions)  # the read's entry, written in a batch
    with workspace.sessions() as session:
        audit = session.scalars(select(AuditEventRow).where(AuditEventRow.image_id == erased))
        actions = [e.action for e in audit]
    assert "image_erased" in actions and "image_read" in actions
    assert ls.get(f"/projects/{PROJECT}/images/{kept}/file").status_code == 200


def test_erasing_a_project_removes_all_its_data(ls: TestClient) -> None:  # noqa: F811
    workspace = _workspace(ls)
    assert _setup(ls).status_code == 200
    event = _annotation_webhook("ANNOTATION_CREATED", 7, 0, IMAGES[0][1])
    assert ls.post("/labelstudio/webhook", json=event).status_code == 200
    project_id = ls.get(f"/projects/{PROJECT}").json()["id"]

    answer = ls.delete(f"/projects/{PROJECT}")

    assert answer.status_code == 200, answer.text
    assert answer.json()["images"] == 1
    assert ls.get(f"/projects/{PROJECT}").status_code == 404
    leftovers = [
        (table, column)
        for table, column, text in _text_cells(workspace)
        if table != AuditEventRow.__tablename__ and project_id in text
    ]
    assert leftovers == []
    blob_root = workspace.blobs.root  # type: ignore[attr-defined]
    assert not (blob_root / "projects" / project_id).exists()
