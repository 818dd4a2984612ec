"""Each business rule through every path that applies it, with the same effects.

Recording a correction (``prelabel.corrections.record_correction``): ``PUT …/correction``,
a Label Studio annotation webhook, the importer and ``prelabel import``. Changing the
serving version (``prelabel.model_versions.change_serving_version``): the promote and
pin routes and the promotion gate of a training run (``models.registry.promote``, the
call ``training.train`` makes; the real worker is covered by tests/e2e/test_continuous.py).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from label_studio_sdk.converter import brush
from sqlalchemy import select
from typer.testing import CliRunner

from models.registry import promote, register_version
from prelabel.audit import AuditQuery, list_events
from prelabel.cli import app as cli_app
from prelabel.corrections import correction_history
from prelabel.database import transaction
from prelabel.datasets.folder import write_dataset
from prelabel.errors import ConflictError
from prelabel.images import list_images
from prelabel.importer import import_dataset
from prelabel.jobs import JobStatus, JobTask, RunTrigger
from prelabel.model_versions import (
    GATE_ACTOR,
    ServingAction,
    ServingChange,
    change_serving_version,
    serving_version_name,
)
from prelabel.schema import LabelSchema
from prelabel.settings import get_service_settings, get_storage_settings
from prelabel.tables import JobRow
from prelabel.workspace import Workspace
from tests.backends import use_storage
from tests.shapes_project import placeholder_version
from tests.synthetic import SHAPES_CLASSES, png_bytes, shapes_sample

LS_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="tag" toName="image">
    <Label value="disk" background="#ff0000"/>
    <Label value="square" background="#00ff00"/>
  </BrushLabels>
</View>"""
FIRST_MODEL_AFTER_ONE = {"first_model_after": 1}


def _workspace(client: TestClient) -> Workspace:
    workspace: Workspace = client.app.state.workspace  # type: ignore[attr-defined]
    return workspace


def _jobs(workspace: Workspace, project_id: str, task: JobTask) -> list[JobRow]:
    with workspace.sessions() as session:
        return list(
            session.scalars(
                select(JobRow).where(JobRow.project_id == project_id, JobRow.task == task)
            )
        )


def _new_project(client: TestClient, name: str) -> str:
    body = {"name": name, "classes": SHAPES_CLASSES, "training_policy": FIRST_MODEL_AFTER_ONE}
    response = client.post("/projects", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


# --- recording a correction ------------------------------------------------


def _by_http(client: TestClient, tmp_path: Path) -> tuple[str, str]:
    project = _new_project(client, "http")
    image, mask = shapes_sample(0)
    upload = client.post(
        f"/projects/{project}/images", files={"files": ("a.png", png_bytes(image), "image/png")}
    )
    image_id = upload.json()["images"][0]["id"]
    assert client.get(f"/projects/{project}/images/{image_id}/draft").status_code == 200
    response = client.put(
        f"/projects/{project}/images/{image_id}/correction",
        files={"mask": ("m.png", png_bytes(mask), "image/png")},
        data={"annotator": "ana"},
    )
    assert response.status_code == 200, response.text
    return project, "api"


def _brush_results(mask: np.ndarray) -> list[dict[str, Any]]:
    return [
        {
            "from_name": "tag",
            "to_name": "image",
            "type": "brushlabels",
            "original_width": mask.shape[1],
            "original_height": mask.shape[0],
            "value": {
                "format": "rle",
                "rle": brush.mask2rle(((mask == class_id) * 255).astype(np.uint8)),
                "brushlabels": [label],
            },
        }
        for class_id, label in ((1, "disk"), (2, "square"))
        if (mask == class_id).any()
    ]


def _by_labelstudio_webhook(client: TestClient, tmp_path: Path) -> tuple[str, str]:
    image, mask = shapes_sample(0)
    data_url = "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()
    task = {"id": 7, "data": {"image": data_url}}
    setup = {"project": "1.1732900000", "schema": LS_CONFIG, "hostname": None}
    assert client.post("/labelstudio/setup", json=setup).status_code == 200
    policy = client.put("/projects/labelstudio-1/training-policy", json=FIRST_MODEL_AFTER_ONE)
    assert policy.status_code == 200, policy.text
    predicted = client.post(
        "/labelstudio/predict",
        json={"tasks": [task], "project": "1.1732900000", "label_config": LS_CONFIG},
    )
    assert predicted.status_code == 200, predicted.text
    annotation = {"id": 3, "task": 7, "project": 1, "result": _brush_results(mask)}
    webhook = {
        "action": "ANNOTATION_CREATED",
        "annotation": {**annotation, "completed_by": {"id": 1, "email": "ana"}},
        "task": task,
        "project": {"id": 1, "label_config": LS_CONFIG},
    }
    assert client.post("/labelstudio/webhook", json=webhook).json()["status"] == "queued"
    return client.get("/projects/labelstudio-1").json()["id"], "labelstudio"


def _dataset(tmp_path: Path) -> Path:
    image, mask = shapes_sample(0)
    schema = LabelSchema.model_validate({"classes": SHAPES_CLASSES})
    write_dataset(tmp_path / "dataset", schema, [("a", image, mask)])
    return tmp_path / "dataset"


def _by_importer(client: TestClient, tmp_path: Path) -> tuple[str, str]:
    project = _new_project(client, "imported")
    import_dataset(
        _workspace(client), _dataset(tmp_path), project="imported", max_pixels=10**6, actor="t"
    )
    return project, "import"


def _by_cli_import(client: TestClient, tmp_path: Path) -> tuple[str, str]:
    project = _new_project(client, "cli")
    with pytest.MonkeyPatch.context() as env:
        use_storage(env, client.app.state.storage_settings)  # type: ignore[attr-defined]
        get_storage_settings.cache_clear()
        get_service_settings.cache_clear()
        try:
            args = ["import", str(_dataset(tmp_path)), "--project", "cli"]
            result = CliRunner().invoke(cli_app, args)
        finally:
            get_storage_settings.cache_clear()
            get_service_settings.cache_clear()
    assert result.exit_code == 0, result.output
    return project, "import"


CORRECTION_PATHS: dict[str, Callable[[TestClient, Path], tuple[str, str]]] = {
    "http": _by_http,
    "labelstudio-webhook": _by_labelstudio_webhook,
    "importer": _by_importer,
    "cli-import": _by_cli_import,
}


@pytest.mark.parametrize("path", sorted(CORRECTION_PATHS))
def test_recording_a_correction_has_the_same_effects_on_every_path(
    client: TestClient, tmp_path: Path, path: str
) -> None:
    project_id, source = CORRECTION_PATHS[path](client, tmp_path)

    workspace = _workspace(client)
    with workspace.sessions() as session:
        (image,) = list_images(session, project_id)
        (correction,) = correction_history(session, image)
    _, mask = shapes_sample(0)
    assert image.has_correction and correction.is_current
    assert correction.source == source and correction.annotator in {"ana", "import"}
    stored = client.get(f"/projects/{project_id}/images/{image.id}/correction")
    assert stored.headers["X-Correction-Id"] == correction.id
    # Compared with the draft the annotator started from, where there was one.
    if source == "import":
        assert correction.draft_id is None and correction.metrics is None
    else:
        assert correction.draft_id is not None and correction.metrics is not None
        assert correction.metrics.changed_pixels == int((mask != 0).sum())
    # The training policy was applied at once: its first-model threshold is one correction.
    (run,) = _jobs(workspace, project_id, JobTask.TRAIN)
    assert (run.trigger, run.status, run.kind) == (RunTrigger.POLICY, JobStatus.QUEUED, "full")


# --- changing the serving version ------------------------------------------


@pytest.fixture
def two_versions(client: TestClient) -> Iterator[tuple[Workspace, str]]:
    """A project whose v1 serves and whose v2 is a candidate, with no job queued yet."""
    project_id = _new_project(client, "versions")
    workspace = _workspace(client)
    with transaction(workspace.sessions) as session:
        for _ in range(2):
            register_version(session, placeholder_version(project_id, training_run_id="run-of-v2"))
        change = ServingChange(ServingAction.PROMOTE, "v1", actor="setup")
        change_serving_version(session, project_id, change)
        session.execute(JobRow.__table__.delete())
    yield workspace, project_id


def _promote_by_http(client: TestClient, project_id: str) -> str:
    body = {"reason": "better"}
    assert client.post(f"/projects/{project_id}/models/v2/promote", json=body).status_code == 200
    return "admin"  # the authenticated caller, whatever a body might claim


def _pin_by_http(client: TestClient, project_id: str) -> str:
    body = {"actor": "someone-else", "reason": "freeze"}
    assert client.post(f"/projects/{project_id}/models/v2/pin", json=body).status_code == 200
    return "admin"


def _promote_by_gate(client: TestClient, project_id: str) -> str:
    # What training.train does at the end of a run: register, then gate, in one transaction.
    with transaction(_workspace(client).sessions) as session:
        promote(session, project_id, "v2", reason="held-out mIoU 0.9 >= serving 0.8")
    return GATE_ACTOR


SERVING_PATHS: dict[str, tuple[Callable[[TestClient, str], str], ServingAction]] = {
    "http-promote": (_promote_by_http, ServingAction.PROMOTE),
    "http-pin": (_pin_by_http, ServingAction.PIN),
    "training-gate": (_promote_by_gate, ServingAction.PROMOTE),
}


@pytest.mark.parametrize("path", sorted(SERVING_PATHS))
def test_changing_the_serving_version_has_the_same_effects_on_every_path(
    client: TestClient, two_versions: tuple[Workspace, str], path: str
) -> None:
    workspace, project_id = two_versions
    change, action = SERVING_PATHS[path]

    actor = change(client, project_id)

    models = client.get(f"/projects/{project_id}/models").json()
    statuses = {m["version"]: m["status"] for m in models}
    assert statuses == {"v2": "serving", "v1": "retired"}
    (drafts,) = _jobs(workspace, project_id, JobTask.DRAFTS)
    assert drafts.status == JobStatus.QUEUED
    with workspace.sessions() as session:
        newest = list_events(session, AuditQuery(project_id=project_id))[0]
    assert (newest.actor, newest.action, newest.details["version"]) == (actor, action, "v2")
    if action is ServingAction.PROMOTE:
        assert newest.details["previous"] == "v1"
        assert newest.details["automatic"] is (actor == GATE_ACTOR)
    if actor == GATE_ACTOR:
        assert newest.details["training_run_id"] == "run-of-v2"


def test_a_reason_holding_nul_is_422_and_changes_nothing(
    client: TestClient, two_versions: tuple[Workspace, str]
) -> None:
    # PostgreSQL text holds no NUL: the change was a 500 there, and stored on SQLite.
    workspace, project_id = two_versions
    with workspace.sessions() as session:
        events = len(list_events(session, AuditQuery(project_id=project_id)))

    refused = client.post(f"/projects/{project_id}/models/v2/promote", json={"reason": "a\x00"})

    assert refused.status_code == 422, refused.text
    assert "NUL character (U+0000)" in refused.json()["detail"]
    with workspace.sessions() as session:
        assert serving_version_name(session, project_id) == "v1"
        assert len(list_events(session, AuditQuery(project_id=project_id))) == events
    assert _jobs(workspace, project_id, JobTask.DRAFTS) == []


def test_a_refused_change_changes_nothing(
    client: TestClient, two_versions: tuple[Workspace, str]
) -> None:
    workspace, project_id = two_versions
    _pin_by_http(client, project_id)
    with workspace.sessions() as session:
        events = len(list_events(session, AuditQuery(project_id=project_id)))
    drafts = len(_jobs(workspace, project_id, JobTask.DRAFTS))

    refused = client.post(f"/projects/{project_id}/models/v1/promote", json={"actor": "x"})
    with (
        pytest.raises(ConflictError, match="pinned to v2"),
        transaction(workspace.sessions) as session,
    ):
        promote(session, project_id, "v1", reason="gate")

    assert refused.status_code == 409
    with workspace.sessions() as session:
        assert serving_version_name(session, project_id) == "v2"
        assert len(list_events(session, AuditQuery(project_id=project_id))) == events
    assert len(_jobs(workspace, project_id, JobTask.DRAFTS)) == drafts
