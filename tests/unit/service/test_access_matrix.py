"""Every route x every role, on the caller's own project and on another client's.

The expectations below are written out by hand, independently of
``service.access_rules``: a route the app serves that is missing here fails
(``test_every_route_is_in_the_matrix``), and so does one without a rule in the app.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient

from prelabel.settings import SecuritySettings, ServiceSettings, StorageSettings
from service.app import create_app
from service.auth import api_routes, check_every_route_has_a_rule
from tests.conftest import admin_token
from tests.synthetic import SHAPES_CLASSES, png_bytes, shapes_sample

ROLES = ("annotator", "reviewer", "ml-engineer", "manager")
EVERY_ROLE = frozenset(ROLES)
PUBLIC, USER, ADMIN = "public", "user", "admin"

IMG = "/projects/{project}/images/{image}"
M = "/projects/{project}/models/{version}"
EXPECTED: dict[tuple[str, str], str | frozenset[str]] = {
    ("GET", "/health"): PUBLIC,
    ("GET", "/health/ready"): PUBLIC,
    ("GET", "/labelstudio/health"): PUBLIC,
    ("GET", "/me"): USER,
    ("GET", "/projects"): USER,
    ("GET", "/labelstudio/bindings"): USER,
    ("GET", "/users"): ADMIN,
    ("POST", "/users"): ADMIN,
    ("POST", "/users/{user}/tokens"): ADMIN,
    ("DELETE", "/users/{user}/tokens"): ADMIN,
    ("GET", "/audit"): ADMIN,
    ("GET", "/metrics"): ADMIN,  # Prometheus; public only with PRELABEL_METRICS_PUBLIC=true
    ("POST", "/projects"): ADMIN,
    ("DELETE", "/projects/{project}"): ADMIN,
    ("PATCH", "/projects/{project}"): frozenset({"manager"}),
    ("GET", "/projects/{project}/reviews"): frozenset({"reviewer", "manager"}),
    ("POST", "/projects/{project}/corrections/{correction}/review"): frozenset(
        {"reviewer", "manager"}
    ),
    ("GET", "/projects/{project}"): EVERY_ROLE,
    ("GET", "/projects/{project}/training-policy"): frozenset({"ml-engineer", "manager"}),
    ("PUT", "/projects/{project}/training-policy"): frozenset({"ml-engineer"}),
    ("GET", "/projects/{project}/audit"): frozenset({"manager"}),
    ("GET", "/projects/{project}/members"): frozenset({"manager"}),
    ("PUT", "/projects/{project}/members/{user}"): frozenset({"manager"}),
    ("DELETE", "/projects/{project}/members/{user}"): frozenset({"manager"}),
    ("POST", "/projects/{project}/images"): frozenset({"ml-engineer", "manager"}),
    ("GET", "/projects/{project}/images"): EVERY_ROLE,
    ("GET", IMG): EVERY_ROLE,
    ("DELETE", IMG): frozenset({"manager"}),
    ("GET", f"{IMG}/file"): EVERY_ROLE,
    ("GET", f"{IMG}/draft"): EVERY_ROLE,
    ("PUT", f"{IMG}/correction"): EVERY_ROLE,
    ("POST", f"{IMG}/refine"): EVERY_ROLE,
    ("GET", f"{IMG}/correction"): EVERY_ROLE,
    ("GET", f"{IMG}/corrections"): EVERY_ROLE,
    ("GET", "/projects/{project}/metrics"): frozenset({"ml-engineer", "manager"}),
    ("POST", "/projects/{project}/training-runs"): frozenset({"ml-engineer"}),
    ("GET", "/projects/{project}/training-runs"): frozenset({"ml-engineer", "manager"}),
    ("GET", "/projects/{project}/training-runs/{run}"): frozenset({"ml-engineer", "manager"}),
    ("POST", "/projects/{project}/bulk-drafts"): frozenset({"ml-engineer", "manager"}),
    ("GET", "/projects/{project}/bulk-drafts"): frozenset({"ml-engineer", "manager"}),
    ("GET", "/projects/{project}/bulk-drafts/{job}"): frozenset({"ml-engineer", "manager"}),
    ("POST", "/projects/{project}/bulk-drafts/{job}/cancel"): frozenset({"ml-engineer", "manager"}),
    ("GET", "/projects/{project}/models"): frozenset({"ml-engineer", "manager"}),
    ("GET", M): frozenset({"ml-engineer", "manager"}),
    ("POST", f"{M}/promote"): frozenset({"ml-engineer"}),
    ("POST", f"{M}/pin"): frozenset({"ml-engineer"}),
    ("DELETE", f"{M}/pin"): frozenset({"ml-engineer"}),
    ("GET", "/projects/{project}/queue"): EVERY_ROLE,
    ("GET", "/projects/{project}/export"): frozenset({"ml-engineer", "manager"}),
    ("POST", "/cvat/projects/{project}/invoke"): EVERY_ROLE,
    ("GET", "/cvat/projects/{project}/function.yaml"): EVERY_ROLE,
    ("POST", "/cvat/projects/{project}/interactor/{label}/invoke"): EVERY_ROLE,
    ("GET", "/cvat/projects/{project}/interactor.yaml"): EVERY_ROLE,
    ("POST", "/labelstudio/setup"): EVERY_ROLE,
    ("POST", "/labelstudio/predict"): EVERY_ROLE,
    ("POST", "/labelstudio/webhook"): EVERY_ROLE,
    ("PUT", "/labelstudio/bindings/{ls_project}"): frozenset({"manager"}),
    ("GET", "/login"): PUBLIC,
    ("POST", "/login"): PUBLIC,
    ("POST", "/logout"): PUBLIC,
    ("GET", "/dashboard"): USER,
    ("GET", "/dashboard/projects/{project}"): frozenset({"ml-engineer", "manager"}),
    ("GET", "/dashboard/projects/{project}/images/{image}"): frozenset({"ml-engineer", "manager"}),
}
"""(method, path) -> who may call it: anyone, any user, admins, or these roles of the project."""
PAGES = {path for (_, path) in EXPECTED if path.startswith(("/dashboard", "/login", "/logout"))}
"""Dashboard pages: an anonymous caller is sent to the login form, errors are HTML pages
with the error code in ``X-Error-Code``."""
FORMS = {("POST", "/login"), ("POST", "/logout")}
"""Form posts: sent with the CSRF token of the login page (and the admin's token to log in)."""

LS_CONFIG = (
    '<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
    '<Label value="disk"/><Label value="square"/></BrushLabels></View>'
)
LS_PROJECT = {"own": 1, "other": 2}
"""Label Studio projects bound to the two prelabel projects; 9 is bound to nothing."""
LS_BOUND = {("POST", "/labelstudio/setup"), ("POST", "/labelstudio/predict")}
LS_BOUND |= {("POST", "/labelstudio/webhook")}
"""Routes whose project comes from the body: an outsider gets the unbound answer."""


@dataclass
class World:
    client: TestClient
    tokens: dict[str, str]
    images: dict[str, str]
    """project name -> an image id of it."""


def _ok(response: httpx.Response) -> None:
    assert response.is_success, response.text


def _add_image(client: TestClient, project: str) -> str:
    files = [("files", ("a.png", png_bytes(shapes_sample(1)[0]), "image/png"))]
    answer = client.post(f"/projects/{project}/images", files=files)
    _ok(answer)
    return str(answer.json()["images"][0]["id"])


@pytest.fixture
def world(
    storage_settings: StorageSettings,
    service_settings: ServiceSettings,
    security_settings: SecuritySettings,
) -> Any:
    app = create_app(storage_settings, service_settings, security_settings)
    with TestClient(app) as client:
        admin = admin_token(storage_settings)
        client.headers["Authorization"] = f"Bearer {admin}"
        tokens = {"admin": admin}
        for name in ("own", "other"):
            _ok(client.post("/projects", json={"name": name, "classes": SHAPES_CLASSES}))
            _ok(client.put(f"/labelstudio/bindings/{LS_PROJECT[name]}", json={"project": name}))
        for role in (*ROLES, "outsider"):
            created = client.post("/users", json={"name": role})
            _ok(created)
            tokens[role] = created.json()["token"]
            # The outsider manages another client's project, never this one.
            project, given = ("other", "manager") if role == "outsider" else ("own", role)
            _ok(client.put(f"/projects/{project}/members/{role}", json={"role": given}))
        images = {name: _add_image(client, name) for name in ("own", "other")}
        del client.headers["Authorization"]
        yield World(client, tokens, images)


def _body(method: str, path: str, project: str, ls_project: int) -> dict[str, Any]:
    """Request arguments that a permitted caller could send."""
    image = {"image": base64.b64encode(png_bytes(shapes_sample(1)[0])).decode()}
    bodies: dict[tuple[str, str], dict[str, Any]] = {
        ("POST", "/users"): {"json": {"name": f"new-{project}"}},
        ("POST", "/projects"): {"json": {"name": "fresh", "classes": SHAPES_CLASSES}},
        ("PUT", "/projects/{project}/training-policy"): {"json": {}},
        ("PATCH", "/projects/{project}"): {"json": {"review_share": 1.0}},
        ("POST", "/projects/{project}/corrections/{correction}/review"): {
            "json": {"decision": "approve", "comment": ""}
        },
        ("PUT", "/projects/{project}/members/{user}"): {"json": {"role": "annotator"}},
        ("POST", "/projects/{project}/images"): {
            "files": [("files", ("b.png", png_bytes(shapes_sample(2)[0]), "image/png"))]
        },
        ("PUT", f"{IMG}/correction"): {"json": {"classes": {}}},
        ("POST", f"{M}/promote"): {"json": {}},
        ("POST", f"{M}/pin"): {"json": {}},
        ("DELETE", f"{M}/pin"): {"json": {}},
        ("POST", "/cvat/projects/{project}/invoke"): {"json": image},
        ("POST", f"{IMG}/refine"): {"json": {"class_id": 1, "positive": [[10, 10]]}},
        ("POST", "/cvat/projects/{project}/interactor/{label}/invoke"): {
            "json": image | {"pos_points": [[10, 10]], "neg_points": []}
        },
        ("POST", "/labelstudio/setup"): {
            "json": {"project": f"{ls_project}.1700000000", "schema": LS_CONFIG}
        },
        ("POST", "/labelstudio/predict"): {
            "json": {
                "tasks": [{"id": 1, "data": {"image": f"data:image/png;base64,{image['image']}"}}],
                "project": f"{ls_project}.1700000000",
                "label_config": LS_CONFIG,
            }
        },
        ("POST", "/labelstudio/webhook"): {
            "json": {
                "action": "ANNOTATIONS_DELETED",
                "annotations": [],
                "project": {"id": ls_project},
            }
        },
        ("PUT", "/labelstudio/bindings/{ls_project}"): {"json": {"project": project}},
    }
    return bodies.get((method, path), {})


def _call(world: World, method: str, path: str, caller: str | None, project: str) -> httpx.Response:
    ls_project = LS_PROJECT.get(project, 9)
    url = path.format(
        project=project,
        image=world.images.get(project, "0" * 32),
        version="v1",
        run="0" * 32,
        job="0" * 32,
        user="annotator",
        ls_project=ls_project,
        label="1",
        correction="0" * 32,
    )
    headers = {"Authorization": f"Bearer {world.tokens[caller]}"} if caller else {}
    kwargs = _body(method, path, project, ls_project)
    if (method, path) in FORMS:
        page = world.client.get("/login").text
        csrf = page.split('name="csrf" value="')[1].split('"')[0]
        kwargs = {"data": {"csrf": csrf, "token": world.tokens["admin"]}}
    return world.client.request(method, url, headers=headers, follow_redirects=False, **kwargs)


def _code(response: httpx.Response) -> str | None:
    """The stable error code: in the JSON body, or in ``X-Error-Code`` for pages."""
    if "x-error-code" in response.headers:
        return response.headers["x-error-code"]
    return (
        response.json().get("code")
        if response.headers.get("content-type", "").startswith("application/json")
        else None
    )


def _allowed(response: httpx.Response) -> bool:
    denied = response.status_code in (401, 403) or (
        response.status_code == 404 and _code(response) == "project_not_found"
    )
    return not denied


def _hidden_like_nothing(world: World, method: str, path: str, caller: str) -> None:
    """Another client's project answers exactly as one that does not exist."""
    theirs = _call(world, method, path, caller, "other")
    nothing = _call(world, method, path, caller, "ghost")
    assert theirs.status_code == nothing.status_code == 404, (theirs.text, nothing.text)
    assert _code(theirs) == _code(nothing) == "project_not_found"
    if path in PAGES:
        assert theirs.text == nothing.text.replace("ghost", "other")
        return
    assert theirs.json() == {
        **nothing.json(),
        "detail": nothing.json()["detail"].replace("ghost", "other"),
    }


@pytest.mark.parametrize("method, path", sorted(EXPECTED), ids=lambda x: str(x))
def test_route_access(world: World, method: str, path: str) -> None:
    access = EXPECTED[(method, path)]
    anonymous = _call(world, method, path, None, "own")
    if access == PUBLIC:
        assert anonymous.is_success or anonymous.is_redirect, anonymous.text
        return
    if path in PAGES:
        assert anonymous.status_code == 303, anonymous.text
        assert anonymous.headers["location"].startswith("/login?next=")
    else:
        assert anonymous.status_code == 401, anonymous.text
        assert anonymous.headers["www-authenticate"].startswith("Bearer")
    project_scoped = isinstance(access, frozenset)
    for role in (*ROLES, "outsider"):
        response = _call(world, method, path, role, "own")
        if access == USER or (project_scoped and role in access):
            assert _allowed(response), (role, response.status_code, response.text)
        elif access == ADMIN or (project_scoped and role != "outsider"):
            assert response.status_code == 403, (role, response.text)
            assert _code(response) == "forbidden"
        elif (method, path) in LS_BOUND:  # bound elsewhere answers as bound nowhere
            unbound = _call(world, method, path, role, "ghost")
            assert response.status_code == unbound.status_code == 422, response.text
            assert response.json() == unbound.json() | {
                "detail": unbound.json()["detail"].replace(" 9 ", " 1 ").replace("/9)", "/1)")
            }
        else:  # not a member of the project: it does not exist for them
            assert response.status_code == 404, (role, response.text)
            assert _code(response) == "project_not_found"
    if project_scoped and (method, path) not in LS_BOUND:
        _hidden_like_nothing(world, method, path, "manager")
        _hidden_like_nothing(world, method, path, "annotator")
    assert _allowed(_call(world, method, path, "admin", "own"))


def test_every_route_is_in_the_matrix(client: TestClient) -> None:
    served = {
        (method, route.path_format)
        for route in api_routes(client.app.routes)  # type: ignore[attr-defined]
        for method in route.methods
    }
    assert served == set(EXPECTED)


def test_an_app_with_a_route_without_a_rule_does_not_build() -> None:
    app = FastAPI()
    extra = APIRouter(prefix="/projects/{project}")

    @extra.get("/secret-new-thing")
    def secret(project: str) -> str:
        return project

    app.include_router(extra)
    with pytest.raises(RuntimeError, match=r"GET /projects/\{project\}/secret-new-thing"):
        check_every_route_has_a_rule(app)


def test_lists_show_only_the_callers_projects(world: World) -> None:
    def names(caller: str) -> list[str]:
        headers = {"Authorization": f"Bearer {world.tokens[caller]}"}
        return [p["name"] for p in world.client.get("/projects", headers=headers).json()]

    assert names("annotator") == ["own"]
    assert names("outsider") == ["other"]
    assert sorted(names("admin")) == ["other", "own"]

    def bindings(caller: str) -> list[int]:
        headers = {"Authorization": f"Bearer {world.tokens[caller]}"}
        answer = world.client.get("/labelstudio/bindings", headers=headers).json()
        return [int(b["ls_project"]) for b in answer]

    assert bindings("manager") == [1]
    assert bindings("annotator") == []
