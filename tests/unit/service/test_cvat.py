"""CVAT: the nuclio detector endpoint, its function.yaml and the cvat-sdk function.

Shapes are decoded with CVAT's own conventions (the server-side conversion of
``cvat/apps/lambda_manager/views.py``, then ``cvat_sdk.masks.decode_mask``) and must give
back the stored draft of the same image exactly.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cvat_sdk.auto_annotation as cvataa
import httpx
import numpy as np
import numpy.typing as npt
import pydantic
import pytest
import yaml
from cvat_sdk.masks import decode_mask
from fastapi.testclient import TestClient
from PIL import Image

from models.predictor import PredictorSpec
from models.registry import NewModelVersion, promote, register_version
from prelabel.codecs import decode_confidence_png, decode_index_png
from prelabel.database import transaction
from prelabel.errors import IntegrationError
from prelabel.workspace import Workspace
from service.integrations import cvat_function
from service.integrations.cvat_function import PrelabelFunction, create
from tests.synthetic import png_bytes, shapes_sample
from tests.unit.models.test_predictor import write_conv_model
from tests.unit.prelabel.test_cvat_shapes import cvat_server_points

# The serving model is a 1x1 convolution, no training needed. The grey image is repeated
# into three channels whose different means act as biases: with u = pixel / 255 the logits
# are 10 (0.3 - u), 10 (u - 0.7) and 0, so the dark synthetic background gets class 0,
# the bright disk class 1 and the mid-grey square class 2: two foreground classes.
THREE_BANDS = PredictorSpec(
    in_channels=3, stride=8, mean=(0.3, 0.7, 0.0), std=(0.1, 0.1, 1.0), classes=3
)
THREE_BANDS_WEIGHTS = np.array([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])


def serve_three_bands(workspace: Workspace, tmp_path: Path, project_id: str) -> None:
    """Register the three-band model and make it the project's serving version."""
    data = write_conv_model(tmp_path / "bands.onnx", THREE_BANDS_WEIGHTS, THREE_BANDS).read_bytes()
    key, digest = f"projects/{project_id}/models/bands.onnx", hashlib.sha256(data).hexdigest()
    workspace.blobs.put(key, data)
    new = NewModelVersion(
        project_id=project_id,
        parent_version=None,
        onnx_key=key,
        onnx_sha256=digest,
        checkpoint_key=key,
        checkpoint_sha256=digest,
        config={},
        metrics={},
        trained_on=[],
        held_out=[],
    )
    with transaction(workspace.sessions) as session:
        promote(session, project_id, register_version(session, new).version, reason="test")


@pytest.fixture
def project(make_project: Callable[[str], str], workspace: Workspace, tmp_path: Path) -> str:
    project_id = make_project("shapes")
    serve_three_bands(workspace, tmp_path, project_id)
    return project_id


@pytest.fixture
def image_png() -> bytes:
    return png_bytes(shapes_sample(11)[0])


def stored_draft(
    client: TestClient, project: str, data: bytes
) -> tuple[npt.NDArray[np.integer], npt.NDArray[np.float32]]:
    """Upload ``data`` and fetch its stored draft: mask and confidence."""
    upload = client.post(f"/projects/{project}/images", files={"files": ("a.png", data)})
    assert upload.status_code == 201, upload.text
    url = f"/projects/{project}/images/{upload.json()['images'][0]['id']}/draft"
    mask = decode_index_png(client.get(url).content, max_pixels=64 * 64)
    confidence = decode_confidence_png(client.get(f"{url}?format=confidence").content)
    return mask, confidence


def invoke(client: TestClient, project: str, data: bytes, **body: Any) -> httpx.Response:
    payload = {"image": base64.b64encode(data).decode("ascii"), **body}
    return client.post(f"/cvat/projects/{project}/invoke", json=payload)


def context(conf_threshold: float | None = None, conv_mask_to_poly: bool = False) -> Any:
    """A ``DetectionFunctionContext`` as cvat-sdk's driver passes it."""
    return SimpleNamespace(
        frame_name="a.png", conf_threshold=conf_threshold, conv_mask_to_poly=conv_mask_to_poly
    )


def test_invoke_shapes_decode_to_the_stored_draft(
    client: TestClient, project: str, image_png: bytes
) -> None:
    draft, confidence = stored_draft(client, project, image_png)
    assert set(np.unique(draft).tolist()) == {0, 1, 2}

    response = invoke(client, project, image_png, threshold=0.0)
    assert response.status_code == 200, response.text
    shapes = response.json()
    assert [(s["label"], s["type"], s["points"]) for s in shapes] == [
        ("disk", "mask", []),
        ("square", "mask", []),
    ]
    rebuilt = np.zeros_like(draft)
    for shape, class_id in zip(shapes, (1, 2), strict=True):
        points = cvat_server_points(shape["mask"])
        rebuilt[decode_mask(points, image_width=64, image_height=64)] = class_id
        mean = float(confidence[draft == class_id].mean())
        assert shape["confidence"] == pytest.approx(mean, abs=1 / 255)
    assert np.array_equal(rebuilt, draft)


def test_invoke_threshold_drops_less_confident_classes(
    client: TestClient, project: str, image_png: bytes
) -> None:
    shapes = invoke(client, project, image_png, threshold=0.0).json()
    low, high = sorted(s["confidence"] for s in shapes)
    kept = invoke(client, project, image_png, threshold=(low + high) / 2).json()
    assert [s["confidence"] for s in kept] == [high]
    assert invoke(client, project, image_png, threshold=high).json() == kept


def test_invoke_without_a_model_is_409(
    client: TestClient, make_project: Callable[[str], str], image_png: bytes
) -> None:
    response = invoke(client, make_project("bare"), image_png)
    assert response.status_code == 409
    assert response.json()["code"] == "conflict"
    assert "no model yet" in response.json()["detail"]


def test_invoke_rejects_bad_input(client: TestClient, project: str) -> None:
    bad_base64 = client.post(f"/cvat/projects/{project}/invoke", json={"image": "%%%"})
    assert (bad_base64.status_code, bad_base64.json()["code"]) == (422, "invalid_encoding")
    not_an_image = invoke(client, project, b"hello, CVAT")
    assert (not_an_image.status_code, not_an_image.json()["code"]) == (422, "invalid_encoding")
    too_large = invoke(client, project, png_bytes(np.zeros((600, 600), dtype=np.uint8)))
    assert (too_large.status_code, too_large.json()["code"]) == (413, "image_too_large")
    unknown = invoke(client, "nope", b"hello")
    assert (unknown.status_code, unknown.json()["code"]) == (404, "project_not_found")


def function_yaml(client: TestClient, project: str) -> dict[str, Any]:
    response = client.get(f"/cvat/projects/{project}/function.yaml")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/yaml")
    config: dict[str, Any] = yaml.safe_load(response.text)
    return config


def test_function_yaml_declares_the_classes(client: TestClient, project: str) -> None:
    config = function_yaml(client, project)
    assert config["metadata"]["name"] == "prelabel-shapes"
    annotations = config["metadata"]["annotations"]
    assert annotations["type"] == "detector"
    assert json.loads(annotations["spec"]) == [
        {"id": 1, "name": "disk", "type": "mask"},
        {"id": 2, "name": "square", "type": "mask"},
    ]
    trigger = config["spec"]["triggers"]["myHttpTrigger"]
    assert trigger["kind"] == "http"
    assert trigger["attributes"]["maxRequestBodySize"] == 32 * 1024 * 1024
    assert config["spec"]["handler"] == "main:handler"
    env = {e["name"]: e["value"] for e in config["spec"]["env"]}
    assert env["PRELABEL_INVOKE_URL"] == f"http://testserver/cvat/projects/{project}/invoke"
    assert env["PRELABEL_TOKEN"] == ""  # set at deploy time: no secret in the file


@pytest.fixture
def urlopen_via(monkeypatch: pytest.MonkeyPatch) -> Callable[[TestClient], None]:
    """Route ``urllib.request.urlopen`` (as the nuclio handler calls it) to a TestClient."""

    def install(client: TestClient) -> None:
        def urlopen(request: urllib.request.Request, timeout: float) -> _Response:
            answer = client.post(request.full_url, content=request.data, headers=request.headers)
            if answer.is_error:
                raise urllib.error.HTTPError(
                    request.full_url, answer.status_code, "error", None, io.BytesIO(answer.content)
                )
            return _Response(answer.status_code, answer.content)

        monkeypatch.setattr(urllib.request, "urlopen", urlopen)

    return install


class _Response:
    def __init__(self, status: int, content: bytes) -> None:
        self.status, self.content = status, content

    def __enter__(self) -> _Response:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def read(self) -> bytes:
        return self.content


def test_function_yaml_handler_forwards_calls_to_prelabel(
    client: TestClient,
    project: str,
    make_project: Callable[[str], str],
    image_png: bytes,
    urlopen_via: Callable[[TestClient], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    urlopen_via(client)
    nuclio_context = SimpleNamespace(Response=lambda **kwargs: kwargs)
    event = SimpleNamespace(body={"image": base64.b64encode(image_png).decode(), "threshold": 0})
    for name, status in ((project, 200), (make_project("bare"), 409)):
        spec = function_yaml(client, name)["spec"]
        source = base64.b64decode(spec["build"]["functionSourceCode"]).decode()
        namespace: dict[str, Any] = {}
        exec(compile(source, "main.py", "exec"), namespace)
        monkeypatch.setenv("PRELABEL_INVOKE_URL", spec["env"][0]["value"])
        answer = namespace["handler"](nuclio_context, event)
        assert answer["status_code"] == status
        assert answer["body"] == invoke(client, name, image_png, threshold=0).text


def test_sdk_function_spec_and_detect_give_back_the_draft(
    client: TestClient, project: str, image_png: bytes
) -> None:
    draft, _ = stored_draft(client, project, image_png)
    function = PrelabelFunction(client, project)
    assert isinstance(function.spec, cvataa.DetectionFunctionSpec)
    assert [(label.name, label.id, label.type) for label in function.spec.labels] == [
        ("disk", 1, "mask"),
        ("square", 2, "mask"),
    ]
    shapes = function.detect(context(), Image.open(io.BytesIO(image_png)))
    assert [(s.label_id, s.type.value, s.frame) for s in shapes] == [(1, "mask", 0), (2, "mask", 0)]
    rebuilt = np.zeros_like(draft)
    for shape in shapes:
        rebuilt[decode_mask(shape.points, image_width=64, image_height=64)] = shape.label_id
    assert np.array_equal(rebuilt, draft)
    assert function.detect(context(conf_threshold=1.0), Image.open(io.BytesIO(image_png))) == []


def test_sdk_function_output_passes_the_sdk_driver_checks(
    client: TestClient, project: str, image_png: bytes
) -> None:
    # annotate_task matches labels by name and validates every shape with this mapper
    # (private in cvat-sdk 2.80.0, the version tested); task label ids differ on purpose.
    from cvat_sdk import models
    from cvat_sdk.auto_annotation.driver import _AnnotationMapper

    function = PrelabelFunction(client, project)
    task_labels = [
        models.PatchedLabelRequest(name="disk", id=10, type="any", attributes=[], sublabels=[]),
        models.PatchedLabelRequest(name="square", id=20, type="mask", attributes=[], sublabels=[]),
    ]
    mapper = _AnnotationMapper(
        logging.getLogger("cvat-sdk"),
        function.spec.labels,
        task_labels,
        allow_unmatched_labels=False,
        conv_mask_to_poly=False,
    )
    shapes = function.detect(context(), Image.open(io.BytesIO(image_png)))
    _, remapped = mapper.validate_and_remap(shapes, 7)
    assert [(s.label_id, s.frame, s.source) for s in remapped] == [(10, 7, "auto"), (20, 7, "auto")]


def test_sdk_function_refuses_polygon_conversion(client: TestClient, project: str) -> None:
    image = Image.new("L", (8, 8))
    with pytest.raises(cvataa.BadFunctionError, match="conv-mask-to-poly"):
        PrelabelFunction(client, project).detect(context(conv_mask_to_poly=True), image)


def test_sdk_function_wraps_prelabel_failures(
    client: TestClient, make_project: Callable[[str], str]
) -> None:
    image = Image.new("L", (8, 8))
    with pytest.raises(IntegrationError, match="409: project 'bare' has no model yet"):
        PrelabelFunction(client, make_project("bare")).detect(context(), image)

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    offline = httpx.Client(base_url="http://prelabel.test", transport=httpx.MockTransport(refuse))
    with pytest.raises(IntegrationError, match="GET /projects/p to prelabel failed"):
        _ = PrelabelFunction(offline, "p").spec
    with pytest.raises(IntegrationError, match="POST /cvat/projects/p/invoke to prelabel failed"):
        PrelabelFunction(offline, "p").detect(context(), image)


def test_function_file_runs_as_cvat_cli_loads_it(client: TestClient, project: str) -> None:
    # cvat-cli --function-file executes the file as "__cvat_function__" without putting it
    # in sys.modules, then calls its create(**parameters).
    spec = importlib.util.spec_from_file_location("__cvat_function__", cvat_function.__file__)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.create(url="http://prelabel.test", project=project, token="plt_x").client.close()
    function = module.PrelabelFunction(client, project)
    assert [label.name for label in function.spec.labels] == ["disk", "square"]


def test_create_reads_the_environment_and_function_parameters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PRELABEL_CVAT_URL", "http://prelabel.test:8000")
    monkeypatch.setenv("PRELABEL_CVAT_PROJECT", "roads")
    monkeypatch.setenv("PRELABEL_CVAT_TOKEN", "s3cret")
    from_env = create()
    assert from_env.project == "roads"
    assert str(from_env.client.base_url) == "http://prelabel.test:8000"
    assert from_env.client.headers["authorization"] == "Bearer s3cret"
    from_env.client.close()

    # cvat-cli's -p project=str:lanes -p timeout_s=float:5 win over the environment.
    given = create(project="lanes", timeout_s=5.0)
    assert (given.project, given.client.timeout.read) == ("lanes", 5.0)
    given.client.close()

    monkeypatch.delenv("PRELABEL_CVAT_URL")
    with pytest.raises(pydantic.ValidationError, match="url"):
        create()
    monkeypatch.setenv("PRELABEL_CVAT_URL", "http://prelabel.test:8000")
    monkeypatch.delenv("PRELABEL_CVAT_TOKEN")
    with pytest.raises(pydantic.ValidationError, match="token"):
        create()  # prelabel authenticates every call: a function without a token is refused
