"""The Label Studio ML backend under /labelstudio: payloads as Label Studio 1.23 sends them.

Task images come as data: URLs, as paths on the Label Studio host and as absolute URLs,
served by an httpx MockTransport (the live path is covered by tests/e2e/test_labelstudio_live.py).
"""

from __future__ import annotations

import base64
import sqlite3
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from label_studio_sdk.converter import brush
from pydantic import SecretStr

from prelabel.database import transaction
from prelabel.drafts import store_draft
from prelabel.images import get_image
from prelabel.integrations.labelstudio import (
    EventContext,
    LsWebhook,
    StoredEvent,
    process_pending_events,
    record_event,
)
from prelabel.projects import get_project
from prelabel.secret_box import SecretBox
from prelabel.settings import (
    IntegrationSettings,
    SecuritySettings,
    ServiceSettings,
    StorageSettings,
)
from prelabel.workspace import Workspace
from service.app import create_app
from service.integrations.labelstudio import labelstudio_settings, make_http_client
from service.integrations.labelstudio_images import ImageSource
from tests.conftest import admin_token
from tests.synthetic import png_bytes, shapes_sample

LS_HOST = "http://ls-host:8080"
TOKEN = "ls-token-123"
CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="tag" toName="image">
    <Label value="disk" background="#ff0000"/>
    <Label value="square" background="#00ff00"/>
  </BrushLabels>
</View>"""

IMAGES = {seed: shapes_sample(seed) for seed in range(4)}


def _ls_host(request: httpx.Request) -> httpx.Response:
    path = request.url.path
    if request.url.host == "cdn.example":
        assert "authorization" not in request.headers  # the token stays with Label Studio
        return httpx.Response(200, content=png_bytes(IMAGES[3][0]))
    if path == "/data/upload/1/slow.png":
        raise httpx.ReadTimeout("read timed out", request=request)
    if request.headers.get("authorization") != f"Token {TOKEN}":
        return httpx.Response(401)
    if path.startswith("/data/upload/1/img") and path.endswith(".png"):
        seed = int(path.removeprefix("/data/upload/1/img").removesuffix(".png"))
        return httpx.Response(200, content=png_bytes(IMAGES[seed][0]))
    return httpx.Response(404)


def _data_url(seed: int) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(IMAGES[seed][0])).decode()


@pytest.fixture
def make_client(
    storage_settings: StorageSettings,
    service_settings: ServiceSettings,
    security_settings: SecuritySettings,
) -> Iterator[Callable[..., TestClient]]:
    opened: list[TestClient] = []

    def make(
        host: Callable[[httpx.Request], httpx.Response] = _ls_host, **settings: Any
    ) -> TestClient:
        app: FastAPI = create_app(storage_settings, service_settings, security_settings)
        app.dependency_overrides[labelstudio_settings] = lambda: IntegrationSettings(**settings)
        app.dependency_overrides[make_http_client] = lambda _settings: httpx.Client(
            transport=httpx.MockTransport(host), timeout=2.0
        )
        client = TestClient(app)
        client.__enter__()
        client.headers["Authorization"] = f"Bearer {admin_token(storage_settings)}"
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture
def ls(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


def _workspace_box(client: TestClient) -> SecretBox:
    box: SecretBox = client.app.state.secret_box  # type: ignore[attr-defined]
    return box


def _workspace(client: TestClient) -> Workspace:
    workspace: Workspace = client.app.state.workspace  # type: ignore[attr-defined]
    return workspace


def _setup(client: TestClient, project: str = "1.1732900000", config: str = CONFIG, **kw: Any):
    body = {
        "project": project,
        "schema": config,
        "hostname": LS_HOST,
        "access_token": TOKEN,
        "extra_params": None,
    }
    return client.post("/labelstudio/setup", json=body, **kw)


def _predict(client: TestClient, tasks: list[dict[str, Any]], **kw: Any) -> httpx.Response:
    body = {
        "tasks": tasks,
        "project": "1.1732900000",
        "label_config": CONFIG,
        "params": {"login": None, "password": None, "context": None},
    }
    return client.post("/labelstudio/predict", json=body, **kw)


def _task(task_id: int, image: str) -> dict[str, Any]:
    return {"id": task_id, "data": {"image": image}, "meta": {}, "project": 1}


def _store_draft(client: TestClient, image_id: str, mask: np.ndarray) -> str:
    """Give the image a non-empty draft, as a serving model would have made."""
    workspace = _workspace(client)
    with transaction(workspace.sessions) as session:
        project = get_project(session, "labelstudio-1")
        image = get_image(session, project.id, image_id)
        confidence = np.where(mask > 0, 0.8, 0.95).astype(np.float32)
        draft = store_draft(
            session,
            workspace.blobs,
            image=image,
            schema=project.label_schema,
            mask=mask,
            confidence=confidence,
            model_version=None,
        )
    return draft.id


def _image_id(client: TestClient, filename: str) -> str:
    images = client.get("/projects/labelstudio-1/images").json()
    return next(i["id"] for i in images if i["filename"] == filename)


def _decode(region: dict[str, Any]) -> np.ndarray:
    flat = brush.decode_rle(region["value"]["rle"])
    rgba = np.reshape(flat, (region["original_height"], region["original_width"], 4))
    return rgba[:, :, 3] > 0


def _annotation_webhook(
    action: str, annotation_id: int, task_id: int, mask: np.ndarray, **annotation: Any
) -> dict[str, Any]:
    results = [
        {
            "id": f"r{class_id}",
            "from_name": "tag",
            "to_name": "image",
            "type": "brushlabels",
            "original_width": mask.shape[1],
            "original_height": mask.shape[0],
            "image_rotation": 0,
            "value": {
                "format": "rle",
                "rle": brush.mask2rle(((mask == class_id) * 255).astype(np.uint8)),
                "brushlabels": [label],
            },
        }
        for class_id, label in ((1, "disk"), (2, "square"))
        if (mask == class_id).any()
    ]
    body = {
        "id": annotation_id,
        "task": task_id,
        "project": 1,
        "result": results,
        "completed_by": 1,
        "lead_time": 42.5,
        "parent_prediction": 11,
        "was_cancelled": False,
        "ground_truth": False,
    }
    body.update(annotation)
    return {
        "action": action,
        "annotation": body,
        "task": {"id": task_id, "data": {"image": f"/data/upload/1/img{task_id}.png"}},
        "project": {"id": 1, "title": "roads", "label_config": CONFIG},
    }


# --- connect --------------------------------------------------------------


def test_health(ls: TestClient) -> None:
    assert ls.get("/labelstudio/health").json() == {"status": "UP", "model_class": "prelabel"}


def test_setup_creates_a_project_from_the_label_config_and_is_idempotent(ls: TestClient) -> None:
    first = _setup(ls)
    assert first.status_code == 200, first.text
    assert first.json() == {"model_version": "none"}
    assert _setup(ls).json() == {"model_version": "none"}
    project = ls.get("/projects/labelstudio-1").json()
    assert [(c["id"], c["name"], c["color"]) for c in project["classes"]] == [
        (0, "background", "#000000"),
        (1, "disk", "#ff0000"),
        (2, "square", "#00ff00"),
    ]
    bindings = ls.get("/labelstudio/bindings").json()
    assert len(bindings) == 1
    assert bindings[0]["project_id"] == project["id"]
    assert bindings[0]["labels"] == {"disk": 1, "square": 2}
    assert bindings[0]["has_access_token"] is True
    assert TOKEN not in ls.get("/labelstudio/bindings").text


def test_explicit_binding_maps_translations_and_names_unknown_labels(
    ls: TestClient, make_project: Callable[[str], str]
) -> None:
    project_id = make_project("shapes")
    bound = ls.put("/labelstudio/bindings/5", json={"project": "shapes"})
    assert bound.status_code == 200, bound.text
    assert bound.json()["project_id"] == project_id and bound.json()["labels"] is None
    german = CONFIG.replace('"disk"', '"Scheibe"').replace('"square"', '"Quadrat"')
    assert _setup(ls, "5.1732900000", german).status_code == 200
    assert ls.get("/labelstudio/bindings").json()[0]["labels"] == {"Scheibe": 1, "Quadrat": 2}
    unknown = _setup(ls, "5.1732900000", CONFIG.replace('"square"', '"triangle"'))
    assert unknown.status_code == 422
    assert unknown.json()["code"] == "schema_mismatch"
    assert "'triangle'" in unknown.json()["detail"] and "'square'" in unknown.json()["detail"]
    assert ls.put("/labelstudio/bindings/5", json={"project": "nope"}).status_code == 404


def test_setup_without_auto_create_needs_a_binding(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(labelstudio_auto_create=False)
    response = _setup(client)
    assert response.status_code == 422
    assert "PUT /labelstudio/bindings/1" in response.json()["detail"]


def test_setup_rejects_a_config_without_brush_labels(ls: TestClient) -> None:
    response = _setup(ls, config='<View><Image name="image" value="$image"/></View>')
    assert response.status_code == 422 and "<BrushLabels>" in response.json()["detail"]


@pytest.mark.parametrize(
    ("labels", "fragment"),
    [
        ('<Label value="Disk"/><Label value="disk"/>', "unique"),
        ('<Label value="background"/><Label value="Background"/>', "unique"),
        (f'<Label value="{"a" * 300}"/>', "at most 200 characters"),
        ('<Label value="di&#9;sk"/>', "control characters"),
    ],
)
def test_setup_refuses_labels_that_make_no_label_schema(
    ls: TestClient, labels: str, fragment: str
) -> None:
    # Each was a 500 (the project spec's ValidationError), with nothing created.
    first, last = CONFIG.index("<Label "), CONFIG.rindex("/>\n  </BrushLabels>") + 2
    config = CONFIG[:first] + labels + CONFIG[last:]
    response = _setup(ls, config=config)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "schema_mismatch"
    assert "label schema" in response.json()["detail"]
    assert fragment in response.json()["detail"]
    assert ls.get("/projects").json() == [] and ls.get("/labelstudio/bindings").json() == []


def test_nul_in_a_binding_or_setup_body_is_422_and_binds_nothing(
    ls: TestClient, make_project: Callable[[str], str]
) -> None:
    # PostgreSQL text holds no NUL: each was a 500 there; SQLite stored the host name.
    make_project("shapes")
    bound = ls.put("/labelstudio/bindings/5", json={"project": "shapes\x00"})
    assert bound.status_code == 422, bound.text
    assert "NUL character (U+0000)" in bound.json()["detail"]
    body = {"project": "1.1732900000", "schema": CONFIG, "hostname": "http://ls\x00host"}
    setup = ls.post("/labelstudio/setup", json=body)
    assert setup.status_code == 422, setup.text
    assert "'http://ls\\x00host'" in setup.json()["detail"]
    assert ls.get("/labelstudio/bindings").json() == []
    assert [p["name"] for p in ls.get("/projects").json()] == ["shapes"]


# --- predict --------------------------------------------------------------


def test_predict_answers_one_region_per_class_that_decodes_to_the_draft(ls: TestClient) -> None:
    _setup(ls)
    tasks = [_task(1, _data_url(0)), _task(2, "/data/upload/1/img1.png")]
    empty = _predict(ls, tasks)
    assert empty.status_code == 200, empty.text
    assert empty.json()["results"] == [
        {"result": [], "score": 0.0, "model_version": "none"},
        {"result": [], "score": 0.0, "model_version": "none"},
    ]
    masks = {1: IMAGES[0][1], 2: IMAGES[1][1]}
    draft_ids = {
        1: _store_draft(ls, _image_id(ls, "labelstudio-task-1"), masks[1]),
        2: _store_draft(ls, _image_id(ls, "img1.png"), masks[2]),
    }
    body = _predict(ls, tasks).json()
    assert body["model_version"] == "none"
    for task_id, result in zip((1, 2), body["results"], strict=True):
        assert result["model_version"] == "none"
        assert 0.8 <= result["score"] <= 0.95
        regions = result["result"]
        assert [r["value"]["brushlabels"] for r in regions] == [["disk"], ["square"]]
        for region, class_id in zip(regions, (1, 2), strict=True):
            assert region["id"].startswith(draft_ids[task_id][:12])
            assert {k: region[k] for k in ("from_name", "to_name", "type", "image_rotation")} == {
                "from_name": "tag",
                "to_name": "image",
                "type": "brushlabels",
                "image_rotation": 0,
            }
            assert (region["original_width"], region["original_height"]) == (64, 64)
            assert region["value"]["format"] == "rle"
            assert region["score"] == pytest.approx(0.8, abs=0.01)
            assert (_decode(region) == (masks[task_id] == class_id)).all()


def test_predict_reuses_images_by_content_and_fetches_absolute_urls_without_token(
    ls: TestClient,
) -> None:
    _setup(ls)
    tasks = [
        _task(1, _data_url(2)),
        _task(2, "/data/upload/1/img2.png"),  # same bytes: same image
        _task(3, "http://cdn.example/pictures/b.png"),
    ]
    assert _predict(ls, tasks).status_code == 200
    names = sorted(i["filename"] for i in ls.get("/projects/labelstudio-1/images").json())
    # Tasks 1 and 2 show the same bytes: one image, named by whichever task (they run in
    # parallel) stored it first.
    assert names in (["b.png", "img2.png"], ["b.png", "labelstudio-task-1"])


def test_predict_reports_failed_tasks_and_keeps_the_others(ls: TestClient) -> None:
    _setup(ls)
    tasks = [
        _task(1, "/data/upload/1/img0.png"),
        _task(2, "/data/upload/1/missing.png"),
        _task(3, "/data/upload/1/slow.png"),
        {"id": 4, "data": {"picture": "x"}},
        _task(5, "ftp://elsewhere/x.png"),
    ]
    results = _predict(ls, tasks).json()["results"]
    assert results[0]["model_version"] == "none"
    assert "result" not in results[1] and "HTTP 404" in results[1]["error"]
    assert "timed out" in results[2]["error"]
    assert "task 4 has no image under data['image']" in results[3]["error"]
    assert "expected a data: URL" in results[4]["error"]


def test_predict_fails_as_a_whole_only_when_every_task_fails(ls: TestClient) -> None:
    _setup(ls)
    response = _predict(ls, [_task(2, "/data/upload/1/missing.png")])
    assert response.status_code == 502
    assert response.json()["code"] == "integration_failed"
    assert "HTTP 404" in response.json()["detail"]
    bad = _predict(ls, [_task(3, "data:image/png;base64,!!!")])
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_encoding"


def test_predict_answers_within_the_budget(make_client: Callable[..., TestClient]) -> None:
    client = make_client(labelstudio_predict_budget_s=0.000001)
    _setup(client)
    results = _predict(client, [_task(1, _data_url(0))]).json()["results"]
    assert "not ready within" in results[0]["error"]


# --- webhooks -------------------------------------------------------------


def _corrections(client: TestClient, image_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/projects/labelstudio-1/images/{image_id}/corrections")
    assert response.status_code == 200, response.text
    return list(response.json())


def test_annotation_webhooks_become_corrections_and_deletion_withdraws_them(
    ls: TestClient,
) -> None:
    _setup(ls)
    _predict(ls, [_task(1, "/data/upload/1/img1.png")])
    image_id = _image_id(ls, "img1.png")
    truth = IMAGES[1][1]
    draft = np.zeros_like(truth)
    draft[truth == 1] = 1  # the draft found the disk, missed the square
    draft_id = _store_draft(ls, image_id, draft)
    _predict(ls, [_task(1, "/data/upload/1/img1.png")])  # the task now links to that draft

    created = ls.post(
        "/labelstudio/webhook", json=_annotation_webhook("ANNOTATION_CREATED", 9, 1, truth)
    )
    assert created.status_code == 200 and created.json()["status"] == "queued"
    [correction] = _corrections(ls, image_id)
    assert correction["annotator"] == "labelstudio:1"
    assert correction["lead_time_s"] == 42.5
    assert correction["draft_id"] == draft_id
    expected_changed = float((truth == 2).mean())
    assert correction["metrics"]["changed_pixel_fraction"] == pytest.approx(expected_changed)
    assert correction["metrics"]["per_class_iou"]["1"] == pytest.approx(1.0)
    mask_png = ls.get(f"/projects/labelstudio-1/images/{image_id}/correction")
    assert mask_png.status_code == 200

    fixed = truth.copy()
    fixed[fixed == 2] = 0
    update = _annotation_webhook(
        "ANNOTATION_UPDATED", 9, 1, fixed, completed_by={"id": 2, "email": "bo@example.org"}
    )
    assert ls.post("/labelstudio/webhook", json=update).status_code == 200
    history = _corrections(ls, image_id)
    assert [(c["annotator"], c["supersedes"]) for c in history] == [
        ("bo@example.org", correction["id"]),
        ("labelstudio:1", None),
    ]
    assert history[0]["metrics"]["changed_pixel_fraction"] == 0.0

    deleted = {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 9}], "project": {"id": 1}}
    assert ls.post("/labelstudio/webhook", json=deleted).status_code == 200
    assert ls.get(f"/projects/labelstudio-1/images/{image_id}/correction").status_code == 404
    assert not ls.get("/projects/labelstudio-1/images").json()[0]["has_correction"]


def test_webhook_corrections_wait_for_review_when_the_project_requires_it(
    ls: TestClient,
) -> None:
    _setup(ls)
    _predict(ls, [_task(1, "/data/upload/1/img1.png")])
    image_id = _image_id(ls, "img1.png")
    patched = ls.patch("/projects/labelstudio-1", json={"review_required": True})
    assert patched.status_code == 200, patched.text
    truth = IMAGES[1][1]

    created = _annotation_webhook("ANNOTATION_CREATED", 9, 1, truth)
    assert ls.post("/labelstudio/webhook", json=created).status_code == 200
    [correction] = _corrections(ls, image_id)
    assert (correction["review_status"], correction["review_reason"]) == ("pending", "drawn")
    # An update in Label Studio replaces it and waits in its place: no second draw.
    updated = _annotation_webhook("ANNOTATION_UPDATED", 9, 1, truth)
    assert ls.post("/labelstudio/webhook", json=updated).status_code == 200
    newest = _corrections(ls, image_id)[0]
    assert (newest["review_status"], newest["review_reason"]) == ("pending", "replaces_pending")
    pending = ls.get("/projects/labelstudio-1/reviews").json()
    assert [item["correction"]["id"] for item in pending] == [newest["id"]]


def test_annotation_of_a_task_never_predicted_fetches_its_image(ls: TestClient) -> None:
    _setup(ls)
    truth = IMAGES[2][1]
    webhook = _annotation_webhook("ANNOTATION_CREATED", 3, 2, truth, parent_prediction=None)
    assert ls.post("/labelstudio/webhook", json=webhook).status_code == 200
    [correction] = _corrections(ls, _image_id(ls, "img2.png"))
    assert correction["draft_id"] is None and correction["metrics"] is None


def test_a_task_image_is_fetched_before_the_event_takes_the_write_lock(
    make_client: Callable[..., TestClient],
) -> None:
    # The event's transaction took SQLite's write lock, then fetched the image: a slow
    # Label Studio held every writer (corrections of everyone) for the fetch's length.
    writable: list[bool] = []

    def slow_host(request: httpx.Request) -> httpx.Response:
        # Another writer, meanwhile: it must not find the database locked.
        other = sqlite3.connect(str(engine.url.database), timeout=0)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.rollback()
            writable.append(True)
        except sqlite3.OperationalError:
            writable.append(False)
        finally:
            other.close()
        return _ls_host(request)

    client = make_client(slow_host)
    engine = _workspace(client).engine
    if engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL has no database-wide write lock: the event row alone is locked")
    _setup(client)
    webhook = _annotation_webhook("ANNOTATION_CREATED", 3, 2, IMAGES[2][1], parent_prediction=None)
    assert client.post("/labelstudio/webhook", json=webhook).status_code == 200
    assert writable == [True]
    [correction] = _corrections(client, _image_id(client, "img2.png"))
    assert correction["annotator"] == "labelstudio:1"


def test_start_training_queues_a_run_and_other_actions_are_ignored(ls: TestClient) -> None:
    _setup(ls)
    started = ls.post(
        "/labelstudio/webhook",
        json={"action": "START_TRAINING", "project": {"id": 1, "label_config": CONFIG}},
    )
    assert started.status_code == 200
    runs = ls.get("/projects/labelstudio-1/training-runs").json()
    assert [(r["status"], r["trigger"]) for r in runs] == [("queued", "manual")]
    ignored = ls.post("/labelstudio/webhook", json={"action": "TASKS_CREATED", "tasks": []})
    assert ignored.json() == {"status": "ignored", "event_id": None}


def test_a_failed_event_is_recorded_and_does_not_block_later_ones(ls: TestClient) -> None:
    _setup(ls)
    wrong_size = _annotation_webhook("ANNOTATION_CREATED", 4, 1, np.zeros((32, 64), np.uint8))
    wrong_size["annotation"]["result"] = [
        {
            "id": "r",
            "from_name": "tag",
            "to_name": "image",
            "type": "brushlabels",
            "original_width": 64,
            "original_height": 32,
            "value": {"format": "rle", "rle": [0, 0, 0, 8], "brushlabels": ["disk"]},
        }
    ]
    assert ls.post("/labelstudio/webhook", json=wrong_size).status_code == 200
    good = _annotation_webhook("ANNOTATION_CREATED", 5, 0, IMAGES[0][1])
    assert ls.post("/labelstudio/webhook", json=good).status_code == 200
    assert len(_corrections(ls, _image_id(ls, "img0.png"))) == 1
    with _workspace(ls).engine.connect() as connection:
        rows = connection.exec_driver_sql(
            "SELECT action, status, error FROM integration_events ORDER BY created_at"
        ).all()
    assert [(r[0], r[1]) for r in rows] == [
        ("ANNOTATION_CREATED", "failed"),
        ("ANNOTATION_CREATED", "done"),
    ]
    assert "64x32" in rows[0][2]


def test_brush_regions_without_rle_or_with_corrupt_words_fail_their_event(ls: TestClient) -> None:
    # A region without RLE was dropped (its pixels recorded as background); a word wider
    # than a byte failed as an unexpected OverflowError.
    _setup(ls)
    no_rle = _annotation_webhook("ANNOTATION_CREATED", 4, 1, IMAGES[1][1])
    no_rle["annotation"]["result"][0]["value"].pop("rle")
    png = _annotation_webhook("ANNOTATION_CREATED", 5, 1, IMAGES[1][1])
    png["annotation"]["result"][0]["value"]["format"] = "png"
    corrupt = _annotation_webhook("ANNOTATION_CREATED", 6, 1, IMAGES[1][1])
    # The header's count is right (64 x 64 x 4); the 32-bit words after it are not bytes.
    corrupt["annotation"]["result"][0]["value"]["rle"] = [0, 0, 64, 0] + [255] * 40
    for webhook in (no_rle, png, corrupt):
        assert ls.post("/labelstudio/webhook", json=webhook).status_code == 200
    with _workspace(ls).engine.connect() as connection:
        rows = connection.exec_driver_sql(
            "SELECT status, error FROM integration_events ORDER BY created_at"
        ).all()
    assert [r[0] for r in rows] == ["failed"] * 3
    assert "region r1" in rows[0][1] and "no RLE" in rows[0][1]
    assert "region r1" in rows[1][1] and "'png'" in rows[1][1]
    assert rows[2][1].startswith("brush RLE is truncated or corrupt"), rows[2][1]
    assert ls.get("/projects/labelstudio-1/images").json() == []


def test_webhook_ids_a_column_cannot_hold_are_422(ls: TestClient) -> None:
    # Task and annotation ids live in 32-bit columns on PostgreSQL (64-bit on SQLite):
    # looking a larger id up was a 500 (the driver overflows), and a queued event holding
    # one failed as an unexpected error.
    _setup(ls)
    for too_big in (2**31, 10**30):
        deleted = {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": too_big}]}
        answer = ls.post("/labelstudio/webhook", json=deleted)
        assert answer.status_code == 422, answer.text
        assert answer.json()["code"] == "invalid_request"
        created = _annotation_webhook("ANNOTATION_CREATED", too_big, 1, IMAGES[1][1])
        assert ls.post("/labelstudio/webhook", json=created).status_code == 422
        on_task = _annotation_webhook("ANNOTATION_CREATED", 3, too_big, IMAGES[1][1])
        assert ls.post("/labelstudio/webhook", json=on_task).status_code == 422
    with _workspace(ls).engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM integration_events").scalar() == 0


def test_events_left_queued_are_processed_at_the_next_start(
    make_client: Callable[..., TestClient], storage_settings: StorageSettings
) -> None:
    first = make_client()
    _setup(first)
    with transaction(_workspace(first).sessions) as session:
        webhook = LsWebhook.model_validate(
            _annotation_webhook("ANNOTATION_CREATED", 6, 3, IMAGES[3][1])
        )
        record_event(session, StoredEvent(webhook=webhook))  # stored, never processed
    first.__exit__(None, None, None)
    second = make_client()
    images = second.get("/projects/labelstudio-1/images").json()
    assert [i["has_correction"] for i in images] == [True]


def test_replicas_processing_together_apply_each_event_once_in_order(
    make_client: Callable[..., TestClient],
) -> None:
    # Two replicas (two apps, each its own engine) and a third caller drain one queue at once.
    replicas = [make_client(), make_client()]
    _setup(replicas[0])
    _predict(
        replicas[1], [_task(1, "/data/upload/1/img1.png"), _task(2, "/data/upload/1/img2.png")]
    )
    workspace = _workspace(replicas[0])
    events = []
    for step in range(6):
        for task in (1, 2):
            action = "ANNOTATION_CREATED" if step == 0 else "ANNOTATION_UPDATED"
            user = {"id": step, "email": f"annotator{step}@example.org"}
            webhook = _annotation_webhook(
                action, 10 + task, task, IMAGES[task][1], completed_by=user
            )
            events.append(StoredEvent(webhook=LsWebhook.model_validate(webhook)))
    with transaction(workspace.sessions) as session:
        for event in events:
            record_event(session, event)
    barrier = threading.Barrier(3)
    processed: list[int] = []

    def drain(client: TestClient) -> None:
        mocked = httpx.Client(transport=httpx.MockTransport(_ls_host), timeout=2.0)
        box = _workspace_box(client)
        images = ImageSource(client=mocked, max_bytes=10**7, secrets=box)
        ctx = EventContext(blobs=_workspace(client).blobs, images=images, max_pixels=10**6)
        barrier.wait()
        processed.append(process_pending_events(_workspace(client).sessions, ctx))

    threads = [threading.Thread(target=drain, args=(c,)) for c in [*replicas, replicas[0]]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert sum(processed) == len(events)
    for task in (1, 2):
        history = _corrections(replicas[1], _image_id(replicas[1], f"img{task}.png"))
        annotators = [c["annotator"] for c in reversed(history)]
        assert annotators == [f"annotator{step}@example.org" for step in range(6)]
    with workspace.engine.connect() as connection:
        statuses = connection.exec_driver_sql("SELECT status FROM integration_events").all()
    assert [row[0] for row in statuses] == ["done"] * len(events)


# --- auth -----------------------------------------------------------------


def _connection(client: TestClient, name: str, role: str | None) -> str:
    """A user for a Label Studio connection (a member with ``role``); its token."""
    token = str(client.post("/users", json={"name": name}).json()["token"])
    if role is not None:
        put = client.put(f"/projects/labelstudio-1/members/{name}", json={"role": role})
        assert put.status_code == 200, put.text
    return token


def test_a_connection_authenticates_with_a_prelabel_token_as_basic_password(
    ls: TestClient,
) -> None:
    assert _setup(ls).status_code == 200  # the admin's token binds (and creates) the project
    annotator = _connection(ls, "ls-annotators", "annotator")
    outsider = _connection(ls, "ls-other-client", None)
    anonymous = httpx.Headers({"Authorization": ""})
    assert ls.get("/labelstudio/health", headers=anonymous).status_code == 200  # liveness
    denied = ls.post("/labelstudio/setup", json={}, headers=anonymous)
    assert denied.status_code == 401
    assert denied.headers["www-authenticate"].startswith("Bearer")
    wrong = _setup(ls, headers=anonymous, auth=("ls", "plt_not-a-token"))
    assert wrong.status_code == 401
    assert _setup(ls, headers=anonymous, auth=("ls", annotator)).status_code == 200
    # Another client's connection cannot tell the Label Studio project is bound at all.
    other = _setup(ls, headers=anonymous, auth=("ls", outsider))
    unbound = _setup(ls, "8.1732900000", headers=anonymous, auth=("ls", outsider))
    assert other.status_code == unbound.status_code == 422
    assert other.json()["detail"] == unbound.json()["detail"].replace(" 8", " 1").replace(
        "/8", "/1"
    )
    event = _annotation_webhook("ANNOTATION_CREATED", 7, 0, IMAGES[0][1], completed_by=None)
    assert ls.post("/labelstudio/webhook", json=event, headers=anonymous).status_code == 401
    refused = ls.post(
        "/labelstudio/webhook", json=event, headers=anonymous, auth=("carla", outsider)
    )
    assert refused.status_code == 422
    assert "not bound to a prelabel project of yours" in refused.json()["detail"]
    accepted = ls.post(
        "/labelstudio/webhook", json=event, headers=anonymous, auth=("carla", annotator)
    )
    assert accepted.status_code == 200
    image_id = _image_id(ls, "img0.png")
    history = ls.get(f"/projects/labelstudio-1/images/{image_id}/corrections").json()
    assert history[0]["annotator"] == "carla"
    audit = ls.get("/projects/labelstudio-1/audit", params={"action": "correction_written"})
    assert [e["actor"] for e in audit.json()] == ["ls-annotators"]
    train = {"action": "START_TRAINING", "project": {"id": 1}}
    forbidden = ls.post(
        "/labelstudio/webhook", json=train, headers=anonymous, auth=("x", annotator)
    )
    assert forbidden.status_code == 403


def test_the_shared_password_is_gone_and_says_so(
    storage_settings: StorageSettings,
    service_settings: ServiceSettings,
    security_settings: SecuritySettings,
) -> None:
    app = create_app(storage_settings, service_settings, security_settings)
    app.dependency_overrides[labelstudio_settings] = lambda: IntegrationSettings(
        labelstudio_password=SecretStr("s3cret-pass")
    )
    with pytest.raises(ValueError, match="was removed"), TestClient(app):
        pass


def test_the_access_token_is_stored_encrypted(ls: TestClient, workspace: Workspace) -> None:
    assert _setup(ls).status_code == 200
    with workspace.engine.connect() as connection:
        stored = connection.exec_driver_sql(
            "SELECT access_token FROM labelstudio_bindings"
        ).scalar_one()
    assert TOKEN not in stored
    assert stored.startswith("fernet:")
