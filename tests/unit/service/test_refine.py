"""``POST …/refine``: the refined whole mask as PNG or RLE JSON, headers, records, 4xx."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from models.click_model import ClickPredictor
from models.registry import NewModelVersion, promote, register_version
from prelabel.codecs import decode_index_png, decode_rle
from prelabel.database import transaction
from prelabel.images import get_image
from prelabel.refinement import Clicks, RefineMethod
from prelabel.refinements import image_refinements
from prelabel.workspace import Workspace
from tests.synthetic import png_bytes, shapes_sample
from tests.unit.service.test_cvat import serve_three_bands


def _upload(client: TestClient, project: str, image: np.ndarray) -> str:
    response = client.post(
        f"/projects/{project}/images", files=[("files", ("a.png", png_bytes(image), "image/png"))]
    )
    assert response.status_code == 201, response.text
    return str(response.json()["images"][0]["id"])


def _centre(region: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(region)
    return [round(float(xs.mean())), round(float(ys.mean()))]


@pytest.fixture
def served(
    client: TestClient, make_project: Callable[[str], str], workspace: Workspace, tmp_path: Path
) -> tuple[str, str, np.ndarray]:
    """A project served by the three-band model (drafts are right) and one image."""
    project = make_project("shapes")
    serve_three_bands(workspace, tmp_path, project)
    image, truth = shapes_sample(4)
    return project, _upload(client, project, image), truth


def test_refine_without_a_model_draws_the_clicked_disk_from_the_empty_draft(
    client: TestClient, make_project: Callable[[str], str], workspace: Workspace
) -> None:
    project = make_project("shapes")
    image, truth = shapes_sample(4)
    image_id = _upload(client, project, image)
    response = client.post(
        f"/projects/{project}/images/{image_id}/refine",
        json={"label": "Scheibe", "positive": [_centre(truth == 1)]},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["X-Refine-Method"] == "grabcut"
    assert "X-Model-Version" not in response.headers  # the empty draft has no model
    mask = decode_index_png(response.content, max_pixels=64 * 64)
    assert np.array_equal(mask == 1, truth == 1)
    assert set(np.unique(mask)) == {0, 1}
    draft_id = client.get(f"/projects/{project}/images/{image_id}/draft").headers["X-Draft-Id"]
    assert response.headers["X-Draft-Id"] == draft_id
    with workspace.sessions() as session:
        (recorded,) = image_refinements(session, get_image(session, project, image_id))
    assert (recorded.draft_id, recorded.class_id, recorded.base, recorded.source) == (
        draft_id,
        1,
        "draft",
        "api",
    )
    assert recorded.clicks.positive == [tuple(_centre(truth == 1))]


def test_refine_json_names_version_method_and_draft(
    client: TestClient, served: tuple[str, str, np.ndarray]
) -> None:
    project, image_id, truth = served
    draft = client.get(f"/projects/{project}/images/{image_id}/draft")
    response = client.post(
        f"/projects/{project}/images/{image_id}/refine?format=json",
        json={"class_id": 1, "negative": [_centre(truth == 1)]},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert response.headers["X-Model-Version"] == body["model_version"] == "v1"
    assert body["draft_id"] == draft.headers["X-Draft-Id"] == response.headers["X-Draft-Id"]
    assert (body["method"], body["base"], body["clicks"]) == ("grabcut", "draft", 1)
    assert (body["width"], body["height"]) == (64, 64)
    disk = decode_rle(body["classes"]["1"]) if "1" in body["classes"] else None
    assert disk is None or not disk[truth == 1].any()  # the clicked disk is gone
    square = decode_rle(body["classes"]["2"]).astype(bool)
    draft_square = decode_index_png(draft.content, max_pixels=64 * 64) == 2
    assert np.array_equal(square, draft_square)  # the other class is untouched


def test_refine_from_the_correction_or_a_named_draft(
    client: TestClient, served: tuple[str, str, np.ndarray]
) -> None:
    project, image_id, truth = served
    url = f"/projects/{project}/images/{image_id}/refine"
    no_correction = client.post(
        url, json={"class_id": 1, "positive": [[1, 1]], "base": "correction"}
    )
    assert no_correction.status_code == 404
    assert no_correction.json()["code"] == "correction_not_found"
    empty = np.zeros_like(truth)
    put = client.put(
        f"/projects/{project}/images/{image_id}/correction",
        files={"mask": ("m.png", png_bytes(empty), "image/png")},
        data={"annotator": "ana"},
    )
    assert put.status_code == 200, put.text
    from_correction = client.post(
        url, json={"class_id": 2, "positive": [_centre(truth == 2)], "base": "correction"}
    )
    assert from_correction.status_code == 200, from_correction.text
    mask = decode_index_png(from_correction.content, max_pixels=64 * 64)
    assert not (mask == 1).any()  # the correction had no disk, and the click was on the square
    assert (mask == 2).sum() > 0.9 * (truth == 2).sum()
    draft_id = client.get(f"/projects/{project}/images/{image_id}/draft").headers["X-Draft-Id"]
    named = client.post(url, json={"class_id": 1, "positive": [[1, 1]], "base": draft_id})
    assert named.status_code == 200 and named.headers["X-Draft-Id"] == draft_id
    unknown = client.post(url, json={"class_id": 1, "positive": [[1, 1]], "base": "nope"})
    assert unknown.status_code == 404 and unknown.json()["code"] == "draft_not_found"


def test_a_correction_counts_the_distinct_clicks_since_the_previous_one(
    client: TestClient, served: tuple[str, str, np.ndarray]
) -> None:
    project, image_id, truth = served
    url = f"/projects/{project}/images/{image_id}/refine"
    a, b = _centre(truth == 1), [2, 2]
    # the second call repeats the first click (a tool sends every click again): 3 clicks
    for body in (
        {"class_id": 1, "positive": [a]},
        {"class_id": 1, "positive": [a], "negative": [b]},
        {"class_id": 2, "negative": [b], "box": [0, 0, 10, 10]},
    ):
        assert client.post(url, json=body).status_code == 200
    correction_url = f"/projects/{project}/images/{image_id}/correction"
    first = client.put(
        correction_url,
        files={"mask": ("m.png", png_bytes(truth), "image/png")},
        data={"annotator": "ana"},
    )
    assert first.json()["clicks"] == 3
    second = client.put(
        correction_url,
        files={"mask": ("m.png", png_bytes(truth), "image/png")},
        data={"annotator": "ana"},
    )
    assert second.json()["clicks"] == 0  # no refinement since the first correction
    history = client.get(f"/projects/{project}/images/{image_id}/corrections").json()
    assert [c["clicks"] for c in history] == [0, 3]


@pytest.mark.parametrize(
    "body, status, code, fragment",
    [
        ({"class_id": 1}, 422, "invalid_request", "nothing to refine"),
        ({"class_id": 1, "positive": [[64, 0]]}, 422, "invalid_request", "(64, 0) lies outside"),
        ({"class_id": 1, "box": [0, 0, 10, 99]}, 422, "invalid_request", "outside the 64x64"),
        ({"class_id": 7, "positive": [[1, 1]]}, 422, "schema_mismatch", "class id 7"),
        ({"label": "road", "positive": [[1, 1]]}, 422, "schema_mismatch", "'road'"),
        ({"class_id": 0, "positive": [[1, 1]]}, 422, "invalid_request", "background"),
        ({"positive": [[1, 1]]}, 422, "invalid_request", "'class_id' or 'label'"),
        ({"class_id": 1, "label": "disk", "positive": [[1, 1]]}, 422, "invalid_request", "both"),
        # PostgreSQL text holds no NUL: a 500 there, a 404 on SQLite.
        ({"class_id": 1, "positive": [[1, 1]], "base": "d\x00"}, 422, "invalid_request", "NUL"),
    ],
)
def test_bad_refine_requests_are_4xx_and_record_nothing(
    client: TestClient,
    served: tuple[str, str, np.ndarray],
    workspace: Workspace,
    body: dict[str, object],
    status: int,
    code: str,
    fragment: str,
) -> None:
    project, image_id, _ = served
    response = client.post(f"/projects/{project}/images/{image_id}/refine", json=body)
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert fragment in response.json()["detail"]
    with transaction(workspace.sessions) as session:
        assert image_refinements(session, get_image(session, project, image_id)) == []


def test_malformed_refine_bodies_and_unknown_images_are_4xx(
    client: TestClient, served: tuple[str, str, np.ndarray]
) -> None:
    project, image_id, _ = served
    url = f"/projects/{project}/images/{image_id}/refine"
    assert client.post(url, json={"class_id": 1, "positive": [[1]]}).status_code == 422
    assert client.post(url, json={"class_id": 1, "positive": [[1, 2]], "x": 1}).status_code == 422
    assert (
        client.post(url + "?format=svg", json={"class_id": 1, "box": [0, 0, 1, 1]}).status_code
        == 422
    )
    missing = client.post(f"/projects/{project}/images/nope/refine", json={"class_id": 1})
    assert missing.status_code == 404 and missing.json()["code"] == "image_not_found"


def _metric(text: str, name: str, **labels: str) -> float:
    """The sum of the exposition's samples of ``name`` that carry ``labels``."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def serve_click_model(
    workspace: Workspace, tmp_path: Path, project_id: str, *, serves: bool = True
) -> Path:
    """Register a tiny network's draft and click models as the serving version."""
    from tests.unit.models.test_guidance import write_click_models

    draft, click = write_click_models(tmp_path)
    keys = {}
    for name, path in (("draft", draft), ("click", click)):
        keys[name] = (f"projects/{project_id}/models/{name}.onnx", path.read_bytes())
        workspace.blobs.put(*keys[name])
    draft_key, click_key = keys["draft"][0], keys["click"][0]
    draft_sha = hashlib.sha256(keys["draft"][1]).hexdigest()
    new = NewModelVersion(
        project_id=project_id,
        parent_version=None,
        onnx_key=draft_key,
        onnx_sha256=draft_sha,
        checkpoint_key=draft_key,
        checkpoint_sha256=draft_sha,
        config={
            "interactive": {
                "onnx_key": click_key,
                "onnx_sha256": hashlib.sha256(keys["click"][1]).hexdigest(),
                "serves": serves,
            }
        },
        metrics={},
        trained_on=[],
        held_out=[],
    )
    with transaction(workspace.sessions) as session:
        promote(session, project_id, register_version(session, new).version, reason="test")
    return click


def test_refine_uses_the_serving_click_model_and_grabcut_for_a_box_alone(
    client: TestClient, make_project: Callable[[str], str], workspace: Workspace, tmp_path: Path
) -> None:
    project = make_project("clicky")
    click_path = serve_click_model(workspace, tmp_path, project)
    image, truth = shapes_sample(5)
    image_id = _upload(client, project, image)
    url = f"/projects/{project}/images/{image_id}/refine"
    before = client.get("/metrics").text

    clicked = client.post(url, json={"class_id": 1, "positive": [_centre(truth == 1)]})
    box = client.post(url, json={"class_id": 1, "box": [10, 10, 40, 40]})

    assert clicked.status_code == 200, clicked.text
    assert clicked.headers["X-Refine-Method"] == "model"
    assert clicked.headers["X-Model-Version"] == "v1"
    assert box.status_code == 200 and box.headers["X-Refine-Method"] == "grabcut"
    # The answer is the click model's: its class-1 pixels given the draft and the click.
    draft_png = client.get(f"/projects/{project}/images/{image_id}/draft").content
    draft = decode_index_png(draft_png, max_pixels=64 * 64)
    expected = ClickPredictor.from_bytes(click_path.read_bytes())(
        image, draft, 1, Clicks(positive=[tuple(_centre(truth == 1))]), background=0
    )
    assert np.array_equal(decode_index_png(clicked.content, max_pixels=64 * 64), expected.mask)
    with transaction(workspace.sessions) as session:
        methods = [
            r.method for r in image_refinements(session, get_image(session, project, image_id))
        ]
    assert methods == [RefineMethod.MODEL, RefineMethod.GRABCUT]
    after = client.get("/metrics").text
    calls = _metric(after, "prelabel_refinements_total", method="model", source="api")
    assert calls - _metric(before, "prelabel_refinements_total", method="model") == 1, after
    clicks = _metric(after, "prelabel_refine_clicks_total", method="model")
    assert clicks - _metric(before, "prelabel_refine_clicks_total", method="model") == 1


def test_a_click_model_that_fails_its_checksum_is_refused(
    client: TestClient, make_project: Callable[[str], str], workspace: Workspace, tmp_path: Path
) -> None:
    project = make_project("tampered")
    serve_click_model(workspace, tmp_path, project)
    workspace.blobs.put(f"projects/{project}/models/click.onnx", b"not the model")
    image, truth = shapes_sample(5)
    image_id = _upload(client, project, image)
    response = client.post(
        f"/projects/{project}/images/{image_id}/refine",
        json={"class_id": 1, "positive": [_centre(truth == 1)]},
    )
    assert response.status_code == 502, response.text
    assert response.json()["code"] == "integration_failed"
    assert "sha256" in response.json()["detail"]


def test_a_click_model_that_failed_its_gate_leaves_refining_to_grabcut(
    client: TestClient, make_project: Callable[[str], str], workspace: Workspace, tmp_path: Path
) -> None:
    project = make_project("gated")
    serve_click_model(workspace, tmp_path, project, serves=False)
    image, truth = shapes_sample(5)
    image_id = _upload(client, project, image)
    response = client.post(
        f"/projects/{project}/images/{image_id}/refine",
        json={"class_id": 1, "positive": [_centre(truth == 1)]},
    )
    assert response.status_code == 200, response.text
    assert response.headers["X-Refine-Method"] == "grabcut"
