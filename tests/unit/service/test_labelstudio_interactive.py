"""Label Studio interactive pre-annotations: ``/predict`` with smart keypoints or a rectangle.

Payloads are shaped as Label Studio 1.23 sends them for ``smart="true"`` tags
(``params.context.result``, percent coordinates, ``is_positive``), answered with
one brush region decoded by ``label_studio_sdk``'s own codec.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from prelabel.images import get_image
from prelabel.projects import get_project
from prelabel.refinements import image_refinements
from tests.unit.service.test_labelstudio import (  # noqa: F401
    IMAGES,
    LS_HOST,
    TOKEN,
    _decode,
    _image_id,
    _store_draft,
    _task,
    _workspace,
    make_client,
)

SMART_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="tag" toName="image">
    <Label value="disk" background="#ff0000"/>
    <Label value="square" background="#00ff00"/>
  </BrushLabels>
  <KeyPointLabels name="tag2" toName="image" smart="true">
    <Label value="disk" smart="true"/>
    <Label value="square" smart="true"/>
  </KeyPointLabels>
  <RectangleLabels name="tag3" toName="image" smart="true">
    <Label value="disk" smart="true"/>
    <Label value="square" smart="true"/>
  </RectangleLabels>
</View>"""


@pytest.fixture
def ls(make_client: Callable[..., TestClient]) -> TestClient:  # noqa: F811
    client = make_client()
    body = {
        "project": "1.1732900000",
        "schema": SMART_CONFIG,
        "hostname": LS_HOST,
        "access_token": TOKEN,
        "extra_params": None,
    }
    assert client.post("/labelstudio/setup", json=body).status_code == 200
    return client


def _keypoint(x: float, y: float, label: str, positive: bool = True) -> dict[str, Any]:
    return {
        "id": "fBWv1t0S2L",
        "type": "keypointlabels",
        "from_name": "tag2",
        "to_name": "image",
        "original_width": 64,
        "original_height": 64,
        "image_rotation": 0,
        "origin": "manual",
        "value": {"x": x, "y": y, "width": 0.32, "keypointlabels": [label]},
        "is_positive": positive,
    }


def _rectangle(x: float, y: float, w: float, h: float, label: str) -> dict[str, Any]:
    return {
        "id": "r3ct",
        "type": "rectanglelabels",
        "from_name": "tag3",
        "to_name": "image",
        "original_width": 64,
        "original_height": 64,
        "image_rotation": 0,
        "origin": "manual",
        "value": {
            "x": x,
            "y": y,
            "width": w,
            "height": h,
            "rotation": 0,
            "rectanglelabels": [label],
        },
    }


def _interactive(
    client: TestClient, task: dict[str, Any], result: list[dict[str, Any]]
) -> httpx.Response:
    body = {
        "tasks": [task],
        "project": "1.1732900000",
        "label_config": SMART_CONFIG,
        "params": {"login": None, "password": None, "context": {"result": result}},
    }
    return client.post("/labelstudio/predict", json=body)


def _percent(region: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(region)
    return (float(xs.mean()) + 0.5) * 100 / 64, (float(ys.mean()) + 0.5) * 100 / 64


def test_a_smart_keypoint_answers_one_refined_region_and_is_recorded(ls: TestClient) -> None:
    _, truth = IMAGES[1]
    task = _task(7, "/data/upload/1/img1.png")
    x, y = _percent(truth == 1)
    response = _interactive(ls, task, [_keypoint(x, y, "disk")])
    assert response.status_code == 200, response.text
    (prediction,) = response.json()["results"]
    (region,) = prediction["result"]
    assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == ["disk"]
    assert (region["from_name"], region["to_name"]) == ("tag", "image")
    decoded = _decode(region)
    assert (decoded & (truth == 1)).sum() / (decoded | (truth == 1)).sum() > 0.9
    workspace = _workspace(ls)
    with workspace.sessions() as session:
        project = get_project(session, "labelstudio-1")
        image = get_image(session, project.id, _image_id(ls, "img1.png"))
        (recorded,) = image_refinements(session, image)
    assert (recorded.source, recorded.class_id, recorded.base) == ("labelstudio", 1, "draft")
    assert recorded.clicks.positive == [(int(x * 64 / 100), int(y * 64 / 100))]


def test_a_negative_keypoint_removes_a_wrong_region_of_the_draft(ls: TestClient) -> None:
    _, truth = IMAGES[2]
    task = _task(8, "/data/upload/1/img2.png")
    assert _interactive(ls, task, [_keypoint(1, 1, "square")]).status_code == 200
    wrong = truth.copy()
    wrong[truth == 2] = 1  # a draft that took the square for a disk
    _store_draft(ls, _image_id(ls, "img2.png"), wrong)
    sx, sy = _percent(truth == 2)
    dx, dy = _percent(truth == 1)
    result = [_keypoint(dx, dy, "disk"), _keypoint(sx, sy, "disk", positive=False)]
    response = _interactive(ls, task, result)
    assert response.status_code == 200, response.text
    (region,) = response.json()["results"][0]["result"]
    decoded = _decode(region)
    assert not decoded[truth == 2].any()
    assert decoded[truth == 1].mean() > 0.9


def test_a_smart_rectangle_draws_the_object_inside(ls: TestClient) -> None:
    _, truth = IMAGES[3]
    ys, xs = np.nonzero(truth == 2)
    x, y = (xs.min() - 1) * 100 / 64, (ys.min() - 1) * 100 / 64
    w, h = (xs.max() - xs.min() + 3) * 100 / 64, (ys.max() - ys.min() + 3) * 100 / 64
    task = _task(9, "/data/upload/1/img3.png")
    response = _interactive(ls, task, [_rectangle(x, y, w, h, "square")])
    assert response.status_code == 200, response.text
    (region,) = response.json()["results"][0]["result"]
    assert region["value"]["brushlabels"] == ["square"]
    decoded = _decode(region)
    assert (decoded & (truth == 2)).sum() / (decoded | (truth == 2)).sum() > 0.85


@pytest.mark.parametrize(
    "result, fragment",
    [
        ([_keypoint(10, 10, "disk"), _keypoint(20, 20, "square")], "exactly one label"),
        ([_keypoint(100.5, 10, "disk")], "not a percentage"),
        ([_keypoint(10, 10, "road")], "'road'"),
        ([{"type": "choices", "value": {"x": 1, "y": 1}}], "no smart keypoint or rectangle"),
        ([_keypoint(10, 10, "disk")] * 1001, "at most 1000"),
    ],
)
def test_bad_smart_regions_are_4xx(
    ls: TestClient, result: list[dict[str, Any]], fragment: str
) -> None:
    response = _interactive(ls, _task(10, "/data/upload/1/img0.png"), result)
    assert response.status_code == 422, response.text
    assert fragment in response.json()["detail"]


def test_a_smart_label_whose_class_has_no_brush_label_is_4xx_and_records_nothing(
    ls: TestClient, make_project: Callable[[str], str]
) -> None:
    project_id = make_project("shapes")  # background, disk, square
    assert ls.put("/labelstudio/bindings/5", json={"project": project_id}).status_code == 200
    config = SMART_CONFIG.replace('<Label value="square" background="#00ff00"/>', "")
    setup = {
        "project": "5.1732900000",
        "schema": config,
        "hostname": LS_HOST,
        "access_token": TOKEN,
    }
    assert ls.post("/labelstudio/setup", json=setup).status_code == 200
    body = {
        "tasks": [_task(12, "/data/upload/1/img0.png")],
        "project": "5.1732900000",
        "label_config": config,
        "params": {"context": {"result": [_keypoint(10, 10, "square")]}},
    }
    response = ls.post("/labelstudio/predict", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "schema_mismatch"
    assert "no label in <BrushLabels name='tag'>" in response.json()["detail"]
    workspace = _workspace(ls)
    with workspace.sessions() as session:
        (stored,) = ls.get(f"/projects/{project_id}/images").json()
        assert image_refinements(session, get_image(session, project_id, stored["id"])) == []


def test_a_null_context_still_answers_drafts(ls: TestClient) -> None:
    body = {
        "tasks": [_task(11, "/data/upload/1/img0.png")],
        "project": "1.1732900000",
        "label_config": SMART_CONFIG,
        "params": {"context": None},
    }
    response = ls.post("/labelstudio/predict", json=body)
    assert response.status_code == 200
    assert response.json()["results"] == [{"result": [], "score": 0.0, "model_version": "none"}]
