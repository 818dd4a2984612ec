"""CVAT interactor: one function per class, its function.yaml, and the invoke path.

Masks come back as CVAT's interactors send them (full-image rows of 0/1) with the
largest outline as a polygon; the nuclio handler of the detector is reused and
must forward interactor calls the same way.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient

from prelabel.database import transaction
from prelabel.images import get_image, list_images
from prelabel.refinements import image_refinements
from prelabel.workspace import Workspace
from tests.synthetic import png_bytes, shapes_sample
from tests.unit.service.test_cvat import serve_three_bands, urlopen_via  # noqa: F401


@pytest.fixture
def project(make_project: Callable[[str], str], workspace: Workspace, tmp_path: Path) -> str:
    project_id = make_project("shapes")
    serve_three_bands(workspace, tmp_path, project_id)
    return project_id


def _centre(region: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(region)
    return [float(xs.mean()) + 0.4, float(ys.mean()) + 0.4]  # CVAT sends sub-pixel points


def interact(
    client: TestClient, project: str, label: str, data: bytes, **body: Any
) -> httpx.Response:
    payload = {"image": base64.b64encode(data).decode("ascii"), **body}
    return client.post(f"/cvat/projects/{project}/interactor/{label}/invoke", json=payload)


def test_interactor_yaml_is_a_one_class_interactor(client: TestClient, project: str) -> None:
    response = client.get(f"/cvat/projects/{project}/interactor.yaml?label=square")
    assert response.status_code == 200, response.text
    config = yaml.safe_load(response.text)
    assert config["metadata"]["name"] == "prelabel-shapes-2-interactor"
    annotations = config["metadata"]["annotations"]
    assert annotations["type"] == "interactor"
    assert (annotations["min_pos_points"], annotations["min_neg_points"]) == (1, 0)
    assert json.loads(annotations["spec"]) == [{"id": 2, "name": "square", "type": "mask"}]
    env = {e["name"]: e["value"] for e in config["spec"]["env"]}
    url = env["PRELABEL_INVOKE_URL"]
    assert url == f"http://testserver/cvat/projects/{project}/interactor/2/invoke"
    # by translation or id, the same class
    by_id = client.get(f"/cvat/projects/{project}/interactor.yaml?label=2").text
    assert by_id == client.get(f"/cvat/projects/{project}/interactor.yaml?label=Quadrat").text


def test_interactor_yaml_needs_a_label_when_there_are_several(
    client: TestClient, project: str
) -> None:
    response = client.get(f"/cvat/projects/{project}/interactor.yaml")
    assert response.status_code == 422
    assert "['disk', 'square']" in response.json()["detail"]
    assert client.get(f"/cvat/projects/{project}/interactor.yaml?label=road").status_code == 422
    background = client.get(f"/cvat/projects/{project}/interactor.yaml?label=background")
    assert background.status_code == 422 and "background" in background.json()["detail"]
    assert client.get("/cvat/projects/nope/interactor.yaml?label=disk").status_code == 404


def test_a_negative_click_on_an_image_prelabel_does_not_store(
    client: TestClient, project: str, workspace: Workspace
) -> None:
    image, truth = shapes_sample(11)
    # the three-band draft finds the disk; a negative click on it removes it
    answer = interact(
        client, project, "disk", png_bytes(image), pos_points=[], neg_points=[_centre(truth == 1)]
    )
    assert answer.status_code == 200, answer.text
    mask = np.array(answer.json()["mask"], dtype=np.uint8)
    assert mask.shape == (64, 64) and not mask.any()
    assert answer.json()["points"] == []
    with workspace.sessions() as session:
        assert list_images(session, project) == []  # nothing stored


def test_an_image_prelabel_stores_is_refined_from_its_draft_and_recorded(
    client: TestClient, project: str, workspace: Workspace
) -> None:
    image, truth = shapes_sample(11)
    data = png_bytes(image)
    upload = client.post(f"/projects/{project}/images", files={"files": ("a.png", data)})
    image_id = upload.json()["images"][0]["id"]
    draft = client.get(f"/projects/{project}/images/{image_id}/draft")
    ys, xs = np.nonzero(truth == 2)
    box = [[float(xs.min()), float(ys.min())], [float(xs.max()), float(ys.max())]]
    answer = interact(
        client, project, "2", data, pos_points=[_centre(truth == 2)], neg_points=[], obj_bbox=box
    )
    assert answer.status_code == 200, answer.text
    mask = np.array(answer.json()["mask"], dtype=bool)
    assert (mask & (truth == 2)).sum() / (mask | (truth == 2)).sum() > 0.9
    polygon = np.array(answer.json()["points"], dtype=np.int32)
    drawn = np.zeros((64, 64), np.uint8)
    cv2.fillPoly(drawn, [polygon], 1)
    assert np.array_equal(drawn.astype(bool), mask)  # one region: its outline is the mask
    with transaction(workspace.sessions) as session:
        (recorded,) = image_refinements(session, get_image(session, project, image_id))
    assert (recorded.source, recorded.class_id, recorded.draft_id) == (
        "cvat",
        2,
        draft.headers["X-Draft-Id"],
    )
    x, y = _centre(truth == 2)
    assert recorded.clicks.positive == [(int(x), int(y))]
    assert recorded.clicks.box == (xs.min(), ys.min(), xs.max(), ys.max())


@pytest.mark.parametrize(
    "label, body, status, fragment",
    [
        ("disk", {"pos_points": [], "neg_points": []}, 422, "nothing to refine"),
        ("disk", {"pos_points": [[64.2, 3.0]]}, 422, "(64, 3) lies outside the 64x64"),
        ("road", {"pos_points": [[1, 1]]}, 422, "'road'"),
        ("0", {"pos_points": [[1, 1]]}, 422, "background"),
    ],
)
def test_bad_interactor_calls_are_4xx(
    client: TestClient, project: str, label: str, body: dict[str, Any], status: int, fragment: str
) -> None:
    answer = interact(client, project, label, png_bytes(shapes_sample(0)[0]), **body)
    assert answer.status_code == status, answer.text
    assert fragment in answer.json()["detail"]
    not_base64 = client.post(
        f"/cvat/projects/{project}/interactor/disk/invoke", json={"image": "!!", **body}
    )
    assert not_base64.status_code == 422


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_a_coordinate_that_is_not_a_finite_number_is_an_invalid_request(
    client: TestClient, project: str, value: str
) -> None:
    image = base64.b64encode(png_bytes(shapes_sample(0)[0])).decode("ascii")
    body = f'{{"image": "{image}", "pos_points": [[{value}, 1]]}}'  # Python's json reads these
    answer = client.post(
        f"/cvat/projects/{project}/interactor/disk/invoke",
        content=body,
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["code"] == "invalid_request"
    assert "is not a finite number" in answer.json()["detail"]


@pytest.mark.parametrize("label", ["\u00b2", "9" * 5000, "\u0661"])
def test_a_label_of_digits_that_int_cannot_read_is_4xx(
    client: TestClient, project: str, label: str
) -> None:
    # "²" is a digit to str.isdigit but not to int(); 5000 digits are over int()'s limit;
    # ARABIC-INDIC DIGIT ONE was class 1 here but no class id in a correction's JSON keys:
    # one rule (schema.class_id_in_key) now reads class ids on every route.
    answer = interact(client, project, label, png_bytes(shapes_sample(0)[0]), pos_points=[[1, 1]])
    assert answer.status_code == 422, answer.text
    assert answer.json()["code"] == "schema_mismatch"
    config = client.get(f"/cvat/projects/{project}/interactor.yaml", params={"label": label})
    assert config.status_code == 422, config.text
    assert config.json()["code"] == "schema_mismatch"


def test_the_nuclio_handler_forwards_interactor_calls(
    client: TestClient,
    project: str,
    urlopen_via: Callable[[TestClient], None],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    urlopen_via(client)
    image, truth = shapes_sample(11)
    body = {
        "image": base64.b64encode(png_bytes(image)).decode(),
        "pos_points": [_centre(truth == 1)],
        "neg_points": [],
        "obj_bbox": None,
    }
    spec = yaml.safe_load(client.get(f"/cvat/projects/{project}/interactor.yaml?label=disk").text)
    source = base64.b64decode(spec["spec"]["build"]["functionSourceCode"]).decode()
    namespace: dict[str, Any] = {}
    exec(compile(source, "main.py", "exec"), namespace)
    monkeypatch.setenv("PRELABEL_INVOKE_URL", spec["spec"]["env"][0]["value"])
    answer = namespace["handler"](
        SimpleNamespace(Response=lambda **kwargs: kwargs), SimpleNamespace(body=body)
    )
    assert answer["status_code"] == 200
    assert (
        json.loads(answer["body"])
        == interact(
            client,
            project,
            "disk",
            png_bytes(image),
            **{k: v for k, v in body.items() if k != "image"},
        ).json()
    )
