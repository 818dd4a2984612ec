"""The dashboard through HTTP: login with a cookie, CSRF, the access rules, languages, numbers."""

from __future__ import annotations

from fastapi.testclient import TestClient

from prelabel.workspace import Workspace
from service.catalogue import STRINGS, choose_language
from tests.dashboard_fixture import build_fixture_project


def _csrf(page: str) -> str:
    return page.split('name="csrf" value="')[1].split('"')[0]


def _login(client: TestClient, token: str) -> None:
    form = client.get("/login")
    answer = client.post(
        "/login", data={"token": token, "csrf": _csrf(form.text)}, follow_redirects=False
    )
    assert answer.status_code == 303, answer.text
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Max-Age=" in cookie


def test_login_cookie_opens_pages_not_the_api(client: TestClient, workspace: Workspace) -> None:
    build_fixture_project(workspace)
    manager = client.post("/users", json={"name": "mia"}).json()["token"]
    client.put("/projects/fixture/members/mia", json={"role": "manager"})
    client.post("/projects", json={"name": "secret", "classes": [{"id": 0, "name": "bg"}]})
    del client.headers["Authorization"]
    assert client.get("/dashboard", follow_redirects=False).headers["location"] == (
        "/login?next=/dashboard"
    )
    _login(client, manager)
    listing = client.get("/dashboard")
    assert "fixture" in listing.text and "secret" not in listing.text
    overview = client.get("/dashboard/projects/fixture")
    assert overview.status_code == 200
    assert 'id="acceptance">50.0 %' in overview.text
    assert 'id="effort">50.0 %' in overview.text
    assert 'data-value="0.5000"' in overview.text  # acceptance on 03-03
    hidden = client.get("/dashboard/projects/secret")
    ghost = client.get("/dashboard/projects/ghost")
    assert hidden.status_code == ghost.status_code == 404
    assert hidden.headers["x-error-code"] == "project_not_found"
    # the cookie is for pages: the API still wants a bearer token
    assert client.get("/projects/fixture/metrics").status_code == 401


def test_forms_need_the_csrf_token(client: TestClient) -> None:
    token = client.headers["Authorization"].split()[1]
    del client.headers["Authorization"]
    client.get("/login")
    refused = client.post("/login", data={"token": token, "csrf": "forged"})
    assert refused.status_code == 403 and refused.headers["x-error-code"] == "forbidden"
    assert client.post("/logout", data={}).status_code == 403
    wrong = client.post("/login", data={"token": "nope", "csrf": _csrf(client.get("/login").text)})
    assert wrong.status_code == 401 and 'id="login-error"' in wrong.text


def test_image_view_and_german(client: TestClient, workspace: Workspace) -> None:
    fixture = build_fixture_project(workspace)
    image = fixture.images[2].id
    page = client.get(
        f"/dashboard/projects/fixture/images/{image}", headers={"Accept-Language": "de-DE,en;q=0.5"}
    )
    assert page.status_code == 200
    assert '<html lang="de">' in page.text and STRINGS["de"]["disagreement"] in page.text
    assert 'id="disagreeing">4<' in page.text  # the square the v2 draft missed
    assert "Quadrat" in page.text  # the class name from the schema's translations
    for panel in ("image", "draft", "confidence", "correction", "disagreement"):
        assert f'id="panel-{panel}"><img src="data:image/png;base64,' in page.text


def test_language_choice() -> None:
    assert choose_language("fr-FR,de;q=0.8,en;q=0.5") == "de"
    assert choose_language("en;q=0.4,de;q=0.9") == "de"
    assert choose_language("fr") == "en" and choose_language(None) == "en"
    assert choose_language("de", override="en") == "en"
    assert set(STRINGS["de"]) == set(STRINGS["en"])
