"""The HTTP API's contract: paths, fields, and a clear 4xx for every kind of bad input."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import numpy as np
import pytest
from fastapi.testclient import TestClient

from prelabel.codecs import encode_rle
from tests.synthetic import SHAPES_CLASSES, png_bytes, shapes_sample


def _upload(client: TestClient, project: str, *arrays: np.ndarray) -> list[str]:
    response = client.post(
        f"/projects/{project}/images",
        files=[("files", (f"i{n}.png", png_bytes(a), "image/png")) for n, a in enumerate(arrays)],
    )
    assert response.status_code == 201, response.text
    return [item["id"] for item in response.json()["images"]]


def _image_count(client: TestClient, project: str) -> int:
    return len(client.get(f"/projects/{project}/images").json())


def test_service_import_does_not_import_torch() -> None:
    # Nor the extras' packages: a service-only install (`pip install .`) has none of them
    # (OpenCV is a base dependency now: GrabCut refines drafts from clicks).
    code = (
        "import sys; import service.app, models.predictor, models.registry, prelabel.cli, "
        "prelabel.datasets.catalog; from service.app import create_app; "
        "leaked = {'torch', 'torchvision', 'nilearn', 'training', 'label_studio_sdk', "
        "'cvat_sdk', 'albumentations'} & set(sys.modules); "
        "assert not leaked, leaked"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_health(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok", "database": "ok", "version": "0.1.0"}


def test_project_create_list_show(client: TestClient) -> None:
    created = client.post("/projects", json={"name": "p", "classes": SHAPES_CLASSES})
    assert created.status_code == 201
    body = created.json()
    assert isinstance(body["id"], str) and body["background_id"] == 0
    assert body["classes"][1]["translations"] == {"de": "Scheibe"}
    assert [p["name"] for p in client.get("/projects").json()] == ["p"]
    assert client.get(f"/projects/{body['id']}").json()["name"] == "p"
    assert client.get("/projects/p").json()["id"] == body["id"]
    duplicate = client.post("/projects", json={"name": "p", "classes": SHAPES_CLASSES})
    assert duplicate.status_code == 409 and duplicate.json()["code"] == "conflict"


@pytest.mark.parametrize(
    "classes, ignore_index, fragment",
    [
        ([{"id": 0, "name": "a"}, {"id": 0, "name": "b"}], 255, "unique"),
        ([{"id": 0, "name": "a"}, {"id": 1, "name": "A "}], 255, "'A ' names both class 0"),
        # A translation that is another class's name: a label picked the first class.
        (
            [{"id": 0, "name": "car"}, {"id": 1, "name": "auto", "translations": {"de": "Car"}}],
            255,
            "'Car' names both class 0 ('car') and class 1 ('auto')",
        ),
        ([{"id": 0, "name": "a", "color": "red"}], 255, "color"),
        ([{"id": 0, "name": "a"}], 0, "ignore_index"),
        ([], 255, "classes"),
    ],
)
def test_invalid_schema_is_422(
    client: TestClient, classes: list, ignore_index: int, fragment: str
) -> None:
    response = client.post(
        "/projects", json={"name": "x", "classes": classes, "ignore_index": ignore_index}
    )
    assert response.status_code == 422
    assert fragment in response.text
    assert client.get("/projects").json() == []


@pytest.mark.parametrize(
    "name, label_class, fragment",
    [
        # A NUL in the name was a 500 on PostgreSQL; in class names it was stored.
        ("a\x00b", {"id": 0, "name": "a"}, "project name 'a\\\\x00b' holds control"),
        ("x", {"id": 0, "name": "a\x00"}, "class 0's name 'a\\\\x00' holds control"),
        ("x", {"id": 0, "name": "a", "translations": {"de": "b\nc"}}, "'de' translation"),
        ("x", {"id": 0, "name": "a", "translations": {"de": "b" * 201}}, "201 characters"),
        ("x", {"id": 3, "name": "   "}, "class 3's name is blank"),
        ("x", {"id": 0, "name": "a", "color": [True, 0, 0]}, "three ints"),
    ],
)
def test_names_and_colours_that_are_not_text_or_colours_are_422(
    client: TestClient, name: str, label_class: dict, fragment: str
) -> None:
    response = client.post("/projects", json={"name": name, "classes": [label_class]})
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_request"
    assert fragment in response.text
    assert client.get("/projects").json() == []


@pytest.mark.parametrize(
    "policy",
    [b'{"margin": NaN}', b'{"margin": 1e400}', b'{"retrain_every_minutes": Infinity}'],
)
def test_training_policy_numbers_that_are_not_finite_are_422(
    client: TestClient, policy: bytes
) -> None:
    # Stored as JSON's non-standard NaN/Infinity and shown as null; a 500 on PostgreSQL.
    headers = {"content-type": "application/json"}
    spec = b'{"name": "p", "classes": [{"id": 0, "name": "a"}], "training_policy": %s}' % policy
    created = client.post("/projects", content=spec, headers=headers)
    assert created.status_code == 422, created.text
    assert "finite" in created.json()["detail"]
    assert client.get("/projects").json() == []
    made = client.post("/projects", json={"name": "p", "classes": SHAPES_CLASSES})
    assert made.status_code == 201
    before = client.get("/projects/p/training-policy").json()
    put = client.put("/projects/p/training-policy", content=policy, headers=headers)
    assert put.status_code == 422, put.text
    assert put.json()["code"] == "invalid_request" and "finite" in put.json()["detail"]
    assert client.get("/projects/p/training-policy").json() == before


def test_upload_list_and_fetch(client: TestClient, make_project: Callable[[str], str]) -> None:
    project = make_project("p")
    image, _ = shapes_sample(0)
    rgb = np.stack([image] * 3, axis=-1)
    ids = _upload(client, project, image, rgb)
    listed = client.get(f"/projects/{project}/images").json()
    assert [(i["id"], i["width"], i["height"], i["has_correction"]) for i in listed] == [
        (ids[0], 64, 64, False),
        (ids[1], 64, 64, False),
    ]
    assert client.get(f"/projects/{project}/images/{ids[0]}/file").content == png_bytes(image)


@pytest.mark.parametrize(
    "payload, status, code",
    [
        (b"definitely not an image", 422, "invalid_encoding"),
        (png_bytes(shapes_sample(0)[0])[:200], 422, "invalid_encoding"),
        (png_bytes(np.zeros((600, 600), np.uint8)), 413, "image_too_large"),
    ],
)
def test_bad_upload_stores_nothing(
    client: TestClient, make_project: Callable[[str], str], payload: bytes, status: int, code: str
) -> None:
    project = make_project("p")
    good = png_bytes(shapes_sample(0)[0])
    response = client.post(
        f"/projects/{project}/images",
        files=[
            ("files", ("good.png", good, "image/png")),
            ("files", ("bad.png", payload, "image/png")),
        ],
    )
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert "bad.png" in response.json()["detail"]
    assert _image_count(client, project) == 0


def test_unknown_project_and_image_are_404(
    client: TestClient, make_project: Callable[[str], str]
) -> None:
    assert client.get("/projects/nope/images").json()["code"] == "project_not_found"
    project = make_project("p")
    response = client.get(f"/projects/{project}/images/nope/draft")
    assert response.status_code == 404 and response.json()["code"] == "image_not_found"
    other = make_project("q")
    (image_id,) = _upload(client, other, shapes_sample(0)[0])
    # Another project's image is invisible: nothing crosses projects.
    assert client.get(f"/projects/{project}/images/{image_id}/draft").status_code == 404


def test_empty_draft_before_any_model(
    client: TestClient, make_project: Callable[[str], str]
) -> None:
    project = make_project("p")
    (image_id,) = _upload(client, project, shapes_sample(0)[0])
    draft = client.get(f"/projects/{project}/images/{image_id}/draft?format=json")
    assert draft.status_code == 200
    body = draft.json()
    assert body["model_version"] is None and body["width"] == 64
    assert list(body["classes"]) == ["0"] and body["classes"]["0"]["size"] == [64, 64]
    assert "X-Model-Version" not in draft.headers
    confidence = client.get(f"/projects/{project}/images/{image_id}/draft?format=confidence")
    assert confidence.headers["content-type"] == "image/png"
    # The draft is stored once per model version: asking again returns the same draft.
    again = client.get(f"/projects/{project}/images/{image_id}/draft")
    assert again.headers["X-Draft-Id"] == body["draft_id"]
    assert client.get(f"/projects/{project}/images/{image_id}/draft?format=svg").status_code == 422


def test_correction_multipart_and_json_with_history(
    client: TestClient, make_project: Callable[[str], str]
) -> None:
    project = make_project("p")
    image, mask = shapes_sample(1)
    (image_id,) = _upload(client, project, image)
    draft_id = client.get(f"/projects/{project}/images/{image_id}/draft").headers["X-Draft-Id"]
    first = client.put(
        f"/projects/{project}/images/{image_id}/correction",
        files={"mask": ("m.png", png_bytes(mask), "image/png")},
        data={"annotator": "ana", "lead_time_s": "3", "draft_id": draft_id},
    )
    assert first.status_code == 200, first.text
    metrics = first.json()["metrics"]
    assert metrics["changed_pixels"] == int((mask != 0).sum())
    assert metrics["accepted"] is False and first.json()["lead_time_s"] == 3.0
    rles = {str(c): encode_rle(mask == c).model_dump() for c in (1, 2)}
    second = client.put(
        f"/projects/{project}/images/{image_id}/correction",
        json={"annotator": "bo", "classes": rles},
    )
    assert second.status_code == 200, second.text
    assert second.json()["supersedes"] == first.json()["id"]
    assert second.json()["draft_id"] == draft_id
    history = client.get(f"/projects/{project}/images/{image_id}/corrections").json()
    assert [h["annotator"] for h in history] == ["bo", "ana"]
    current = client.get(f"/projects/{project}/images/{image_id}/correction")
    assert current.headers["X-Correction-Id"] == second.json()["id"]
    listed = client.get(f"/projects/{project}/images").json()
    assert listed[0]["has_correction"] is True
    metrics_body = client.get(f"/projects/{project}/metrics").json()
    assert metrics_body["overall"]["corrections"] == 1
    assert metrics_body["by_annotator"]["bo"]["acceptance_rate"] == 0.0


def _bad_corrections() -> list[tuple[dict, int, str]]:
    _, mask = shapes_sample(1)
    bad_class = mask.copy()
    bad_class[0, 0] = 7
    return [
        (
            {
                "files": {"mask": ("m.png", png_bytes(mask[:32]), "image/png")},
                "data": {"annotator": "a"},
            },
            422,
            "invalid_request",
        ),
        (
            {
                "files": {"mask": ("m.png", png_bytes(bad_class), "image/png")},
                "data": {"annotator": "a"},
            },
            422,
            "schema_mismatch",
        ),
        (
            {"files": {"mask": ("m.png", b"garbage", "image/png")}, "data": {"annotator": "a"}},
            422,
            "invalid_encoding",
        ),
        (
            {
                "files": {"mask": ("m.png", png_bytes(mask), "image/png")},
                "data": {"lead_time_s": "x"},
            },
            422,
            "invalid_request",
        ),
        (
            {
                "files": {"mask": ("m.png", png_bytes(mask), "image/png")},
                "data": {"annotator": "a", "lead_time_s": "soon"},
            },
            422,
            "invalid_request",
        ),
        (
            {
                "files": {"mask": ("m.png", png_bytes(mask), "image/png")},
                "data": {"annotator": "a", "draft_id": "nope"},
            },
            404,
            "draft_not_found",
        ),
        (
            {"json": {"annotator": "a", "classes": {"1": {"size": [64, 64], "counts": "!!"}}}},
            422,
            "invalid_encoding",
        ),
        (
            {"json": {"annotator": "a", "classes": {"1": {"size": [32, 32], "counts": "0`0"}}}},
            422,
            "invalid_encoding",
        ),
        (
            {"json": {"annotator": "a", "classes": {"9": encode_rle(mask == 1).model_dump()}}},
            422,
            "schema_mismatch",
        ),
        ({"json": {"annotator": "a"}}, 422, "invalid_request"),
        ({"json": {"annotator": "", "classes": {}}}, 422, "invalid_request"),
        ({"content": b"mask", "headers": {"content-type": "text/plain"}}, 422, "invalid_request"),
    ]


@pytest.mark.parametrize("request_kwargs, status, code", _bad_corrections())
def test_bad_correction_is_4xx_and_stores_nothing(
    client: TestClient,
    make_project: Callable[[str], str],
    request_kwargs: dict,
    status: int,
    code: str,
) -> None:
    project = make_project("p")
    (image_id,) = _upload(client, project, shapes_sample(1)[0])
    response = client.put(f"/projects/{project}/images/{image_id}/correction", **request_kwargs)
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert response.json()["detail"]
    assert client.get(f"/projects/{project}/images/{image_id}/corrections").json() == []


def test_training_run_queue_and_models(
    client: TestClient, make_project: Callable[[str], str]
) -> None:
    project = make_project("p")
    first = client.post(f"/projects/{project}/training-runs")
    assert first.status_code == 202 and first.json()["status"] == "queued"
    # A second request while one is queued coalesces into it.
    again = client.post(f"/projects/{project}/training-runs", json={"kind": "full"})
    assert again.json()["id"] == first.json()["id"] and again.json()["kind"] == "full"
    runs = client.get(f"/projects/{project}/training-runs").json()
    assert [r["id"] for r in runs] == [first.json()["id"]]
    assert client.get(f"/projects/{project}/training-runs/nope").status_code == 404
    assert client.get(f"/projects/{project}/models").json() == []
    assert client.get(f"/projects/{project}/models/v1").json()["code"] == "model_not_found"


def test_openapi_lists_every_path(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in [
        "/health",
        "/projects",
        "/projects/{project}",
        "/projects/{project}/images",
        "/projects/{project}/images/{image}/draft",
        "/projects/{project}/images/{image}/correction",
        "/projects/{project}/metrics",
        "/projects/{project}/training-runs",
        "/projects/{project}/training-runs/{run}",
        "/projects/{project}/models",
    ]:
        assert path in paths, path
    assert "multipart/form-data" in str(
        paths["/projects/{project}/images/{image}/correction"]["put"]["requestBody"]
    )
