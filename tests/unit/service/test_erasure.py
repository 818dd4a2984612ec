"""Erasure leaves nothing of an image behind but audit entries (ids only)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import JSON, String, Text, select

from models.registry import register_version
from prelabel.bulk_drafts import (
    BulkFailure,
    BulkProgress,
    finish_bulk_job,
    record_bulk_progress,
)
from prelabel.database import transaction
from prelabel.images import get_image
from prelabel.jobs import JobStatus, claim_job
from prelabel.projects import get_project
from prelabel.tables import AuditEventRow, Base
from prelabel.workspace import Workspace
from tests.shapes_project import constant_draft, placeholder_version
from tests.synthetic import png_bytes, shapes_sample
from tests.unit.service.test_cvat import serve_three_bands
from tests.unit.service.test_labelstudio import (  # noqa: F401  (fixtures)
    IMAGES,
    _annotation_webhook,
    _image_id,
    _setup,
    _workspace,
    ls,
    make_client,
)
from training.worker import execute_drafts_job

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


def _leftovers(workspace: Workspace, secrets: set[str]) -> list[tuple[str, str]]:
    """(table, column) of every non-audit cell, and (blob, "") of every blob, naming a secret."""
    found = [
        (table, column)
        for table, column, text in _text_cells(workspace)
        if table != AuditEventRow.__tablename__ and any(s in text for s in secrets)
    ]
    blob_root = workspace.blobs.root  # type: ignore[attr-defined]
    for blob in (p for p in blob_root.rglob("*") if p.is_file()):
        content = blob.read_bytes()
        if any(s in str(blob) or s.encode() in content for s in secrets):
            found.append((str(blob.relative_to(blob_root)), ""))
    return found


def test_erasing_an_image_leaves_nothing_in_bulk_jobs_refinements_or_reviews(
    client: TestClient, make_project: Callable[[str], str], workspace: Workspace, tmp_path: Path
) -> None:
    project = make_project("erasure")
    serve_three_bands(workspace, tmp_path, project)
    name, annotator = "patient-4711-scan.png", "ana-erased-annotator"
    data = png_bytes(shapes_sample(3)[0])
    files = [
        ("files", (name, data, "image/png")),
        ("files", ("kept.png", png_bytes(shapes_sample(4)[0]), "image/png")),
    ]
    uploaded = client.post(f"/projects/{project}/images", files=files)
    assert uploaded.status_code == 201, uploaded.text
    erased, kept = (image["id"] for image in uploaded.json()["images"])
    with workspace.sessions() as session:
        blob_key = get_image(session, project, erased).blob_key
    workspace.blobs.put(blob_key, b"\x89PNG\r\n\x1a\n but not an image")  # a failure naming it
    (queued,) = client.get(f"/projects/{project}/bulk-drafts").json()
    job = claim_job(workspace.sessions, queued["id"], "test-worker")
    assert execute_drafts_job(workspace, job, threads=1) is JobStatus.SUCCEEDED
    failures = client.get(f"/projects/{project}/bulk-drafts/{job.id}").json()["progress"]
    assert [f["filename"] for f in failures["failures"]] == [name]
    workspace.blobs.put(blob_key, data)
    listed = client.post(f"/projects/{project}/bulk-drafts", json={"image_ids": [erased, kept]})
    assert listed.status_code == 202, listed.text  # queued: its params list the image
    path = f"/projects/{project}/images/{erased}"
    assert client.get(f"{path}/draft?format=json").status_code == 200
    refined = client.post(f"{path}/refine", json={"class_id": 1, "positive": [[5, 5]]})
    assert refined.status_code == 200, refined.text
    assert client.patch(f"/projects/{project}", json={"review_required": True}).is_success
    first = client.put(f"{path}/correction", json={"classes": {}, "annotator": annotator})
    assert first.status_code == 200, first.text
    review_url = f"/projects/{project}/corrections/{first.json()['id']}/review"
    rejected = client.post(review_url, json={"decision": "reject", "comment": "redo"})
    assert rejected.is_success, rejected.text
    assert client.get(f"/projects/{project}/export").status_code == 200
    assert client.get(f"/projects/{project}/metrics").status_code == 200
    secrets = {erased, name, annotator, hashlib.sha256(data).hexdigest()}
    secrets |= {c["id"] for c in client.get(f"{path}/corrections").json()}

    answer = client.delete(path)

    assert answer.status_code == 200, answer.text
    assert _leftovers(workspace, secrets) == []
    shown = client.get(f"/projects/{project}/bulk-drafts/{job.id}").json()["progress"]
    assert (shown["failed"], shown["failures"]) == (1, [])
    workspace.deferred.flush(workspace.sessions)
    audit = [
        text for table, _, text in _text_cells(workspace) if table == AuditEventRow.__tablename__
    ]
    personal = {name, annotator, hashlib.sha256(data).hexdigest()}  # audit keeps ids only
    assert not [text for text in audit if any(s in text for s in personal)]
    assert client.get(f"/projects/{project}/bulk-drafts/{listed.json()['id']}").is_success


def test_a_running_bulk_job_cannot_bring_back_an_image_erased_while_it_ran(
    client: TestClient, make_project: Callable[[str], str], workspace: Workspace, tmp_path: Path
) -> None:
    # The worker keeps its progress in memory and writes all of it after each image: a
    # failure it held for an image erased meanwhile was written back, id and file name.
    project = make_project("erased-while-running")
    serve_three_bands(workspace, tmp_path, project)
    files = [
        ("files", ("patient-4711.png", png_bytes(shapes_sample(3)[0]), "image/png")),
        ("files", ("kept.png", png_bytes(shapes_sample(4)[0]), "image/png")),
    ]
    uploaded = client.post(f"/projects/{project}/images", files=files)
    erased, kept = (image["id"] for image in uploaded.json()["images"])
    (queued,) = client.get(f"/projects/{project}/bulk-drafts").json()
    job = claim_job(workspace.sessions, queued["id"], "test-worker")
    held = BulkProgress(
        total=2,
        done=2,
        failed=2,
        failures=[
            BulkFailure(image_id=erased, filename="patient-4711.png", reason="unreadable"),
            BulkFailure(image_id=kept, filename="kept.png", reason="unreadable"),
        ],
    )
    assert client.delete(f"/projects/{project}/images/{erased}").status_code == 200
    url = f"/projects/{project}/bulk-drafts/{job.id}"
    with transaction(workspace.sessions) as session:
        assert record_bulk_progress(session, job.id, held)
    shown = client.get(url).json()["progress"]
    assert (shown["failed"], [f["image_id"] for f in shown["failures"]]) == (2, [kept])
    with transaction(workspace.sessions) as session:
        assert finish_bulk_job(session, job.id, held, status=JobStatus.SUCCEEDED)
    shown = client.get(url).json()["progress"]
    assert (shown["failed"], [f["image_id"] for f in shown["failures"]]) == (2, [kept])
    assert "patient-4711" not in str(client.get(url).json())
