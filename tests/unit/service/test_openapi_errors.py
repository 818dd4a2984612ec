"""The OpenAPI schema describes what the service answers, errors included; regressions of
the fuzzer's findings (``bench/fuzz.py``).

Every 4xx is ``{"detail": str, "code": str}``, FastAPI's own validation errors and
Starlette's unknown paths included, and every operation declares those answers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient

from prelabel.workspace import Workspace
from tests.unit.service.test_cvat import serve_three_bands

DECLARED_ERRORS = {"401", "403", "404", "409", "413", "422"}


ERROR_REF = "#/components/schemas/ErrorOut"


def test_every_operation_declares_its_error_answers(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    missing = []
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            for status in DECLARED_ERRORS:
                answer = operation["responses"].get(status)
                schema = (answer or {}).get("content", {}).get("application/json", {})
                if schema.get("schema", {}).get("$ref") != ERROR_REF:
                    missing.append(f"{method.upper()} {path} {status}")
    assert missing == []
    assert spec["components"]["schemas"]["ErrorOut"]["required"] == ["detail", "code"]


def _is_error_body(body: object) -> bool:
    return (
        isinstance(body, dict)
        and set(body) == {"detail", "code"}
        and all(isinstance(value, str) and value for value in body.values())
    )


def test_request_validation_errors_have_the_error_shape(
    client: TestClient, make_project: Callable[[str], str]
) -> None:
    project = make_project("shapes")
    bad_query = client.get(f"/projects/{project}/queue", params={"limit": "many"})
    assert bad_query.status_code == 422
    assert _is_error_body(bad_query.json())
    assert bad_query.json()["code"] == "invalid_request"
    assert "limit" in bad_query.json()["detail"]
    bad_json = client.post(
        "/projects", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert bad_json.status_code == 422
    assert _is_error_body(bad_json.json())


def test_unknown_paths_and_methods_have_the_error_shape(client: TestClient) -> None:
    unknown = client.get("/no/such/path")
    assert unknown.status_code == 404
    assert unknown.json() == {"detail": "Not Found", "code": "not_found"}
    wrong_method = client.patch("/projects")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["code"] == "method_not_allowed"


def test_cvat_image_outside_ascii_is_422_not_500(
    client: TestClient, make_project: Callable[[str], str], workspace: Workspace, tmp_path: Path
) -> None:
    """Finding: ``b64decode`` raises ValueError (not binascii.Error) on non-ASCII text."""
    project = make_project("shapes")
    serve_three_bands(workspace, tmp_path, project)
    detector = client.post(f"/cvat/projects/{project}/invoke", json={"image": "\u00bc\u0005P>"})
    assert detector.status_code == 422, detector.text
    assert detector.json()["code"] == "invalid_encoding"
    assert "base64" in detector.json()["detail"]
    interactor = client.post(
        f"/cvat/projects/{project}/interactor/disk/invoke",
        json={"image": "é", "pos_points": [[1, 1]]},
    )
    assert interactor.status_code == 422, interactor.text
    assert "base64" in interactor.json()["detail"]
    assert client.get(f"/projects/{project}").status_code == 200


def test_basic_credentials_outside_ascii_are_401_not_500(client: TestClient) -> None:
    """Finding: the same ValueError in the Basic-auth parsing of the access check."""
    answer = client.get("/me", headers={"Authorization": "Basic \u00e9\u00e9".encode("latin-1")})
    assert answer.status_code == 401
    assert answer.json()["code"] == "not_authenticated"
    labelstudio = client.post(
        "/labelstudio/setup",
        headers={"Authorization": "Basic \u00e9".encode("latin-1")},
        json={"project": "1", "schema": "<View/>"},
    )
    assert labelstudio.status_code == 401
