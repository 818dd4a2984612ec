"""Authentication end to end: first start, tokens over HTTP and the CLI, own corrections,
the audit trail of data access, and what ``PRELABEL_AUTH=off`` gives up."""

from __future__ import annotations

import csv
import getpass
import io
import logging
import stat
from collections.abc import Callable
from datetime import datetime

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from prelabel.accounts import ADMIN_TOKEN_FILE
from prelabel.cli import app as cli
from prelabel.settings import (
    AuthMode,
    SecuritySettings,
    ServiceSettings,
    StorageSettings,
    get_storage_settings,
)
from prelabel.tables import ApiTokenRow, AuditEventRow
from prelabel.workspace import open_workspace
from service.app import create_app
from tests.conftest import admin_token
from tests.synthetic import SHAPES_CLASSES, png_bytes, shapes_sample


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _user(client: TestClient, name: str, project: str | None, role: str | None) -> str:
    created = client.post("/users", json={"name": name})
    assert created.status_code == 201, created.text
    if project and role:
        put = client.put(f"/projects/{project}/members/{name}", json={"role": role})
        assert put.status_code == 200, put.text
    return str(created.json()["token"])


def _image(client: TestClient, project: str) -> str:
    files = [("files", ("a.png", png_bytes(shapes_sample(3)[0]), "image/png"))]
    return str(client.post(f"/projects/{project}/images", files=files).json()["images"][0]["id"])


def test_first_start_writes_the_admin_token_readable_only_by_its_owner(
    storage_settings: StorageSettings,
    service_settings: ServiceSettings,
    security_settings: SecuritySettings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = storage_settings.home / ADMIN_TOKEN_FILE
    with (
        caplog.at_level(logging.WARNING),
        TestClient(create_app(storage_settings, service_settings, security_settings)) as client,
    ):
        token = path.read_text().strip()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert str(path) in caplog.text
        me = client.get("/me", headers=_bearer(token)).json()
        assert (me["name"], me["is_admin"]) == ("admin", True)
    with TestClient(create_app(storage_settings, service_settings, security_settings)) as again:
        assert path.read_text().strip() == token  # no second admin, same token
        assert [u["name"] for u in again.get("/users", headers=_bearer(token)).json()] == ["admin"]


def test_auth_off_lets_anyone_act_as_local_and_warns_at_every_start(
    storage_settings: StorageSettings,
    service_settings: ServiceSettings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    off = SecuritySettings(auth=AuthMode.OFF)
    with (
        caplog.at_level(logging.WARNING),
        TestClient(create_app(storage_settings, service_settings, off)) as client,
    ):
        assert "PRELABEL_AUTH=off" in caplog.text
        assert client.get("/me").json()["name"] == "local"
        created = client.post(
            "/projects", json={"name": "solo", "classes": [{"id": 0, "name": "bg"}]}
        )
        assert created.status_code == 201, created.text
    assert not (storage_settings.home / ADMIN_TOKEN_FILE).exists()
    assert SecuritySettings().auth is AuthMode.ON  # on unless explicitly off


def test_a_token_is_shown_once_listed_never_and_dies_when_revoked(
    client: TestClient, make_project: Callable[[str], str]
) -> None:
    project = make_project("p")
    token = _user(client, "ann", project, "annotator")
    listed = client.get("/users").json()
    assert token not in str(listed)
    assert {u["name"]: u["active_tokens"] for u in listed} == {"admin": 1, "ann": 1}
    assert client.get(f"/projects/{project}", headers=_bearer(token)).status_code == 200
    assert client.delete("/users/ann/tokens").json() == {"user": "ann", "revoked_tokens": 1}
    refused = client.get(f"/projects/{project}", headers=_bearer(token))
    assert refused.status_code == 401
    assert refused.json()["code"] == "not_authenticated"
    renewed = client.post("/users/ann/tokens", json={"expires_in_days": 30}).json()
    assert renewed["expires_at"] is not None
    assert client.get(f"/projects/{project}", headers=_bearer(renewed["token"])).status_code == 200


def test_user_names_are_unique_in_any_letter_case(client: TestClient) -> None:
    # "Ann" beside "ann" were two accounts that audit logs and dashboards told apart by case.
    assert client.post("/users", json={"name": "ann"}).status_code == 201
    for name in ("Ann", "ANN", "Admin"):
        refused = client.post("/users", json={"name": name})
        assert refused.status_code == 409, refused.text
        assert "already exists as" in refused.json()["detail"]
    assert sorted(u["name"] for u in client.get("/users").json()) == ["admin", "ann"]


def test_the_last_admin_who_can_sign_in_keeps_its_tokens_over_http(client: TestClient) -> None:
    # Revoking them left nobody able to issue a token over HTTP (only the CLI recovered).
    refused = client.delete("/users/admin/tokens")
    assert refused.status_code == 409, refused.text
    assert "last admin" in refused.json()["detail"]
    assert client.get("/me").status_code == 200
    root = client.post("/users", json={"name": "root", "admin": True}).json()["token"]
    assert client.delete("/users/admin/tokens").json()["revoked_tokens"] == 1
    assert client.get("/me").status_code == 401
    assert client.delete("/users/root/tokens", headers=_bearer(root)).status_code == 409
    assert client.get("/me", headers=_bearer(root)).status_code == 200


def test_the_admin_flag_of_a_new_user_takes_only_json_booleans(client: TestClient) -> None:
    # Lax parsing read "yes", "true", "on" and 1 as true: each created an admin.
    for value in ("yes", "true", "on", 1, "no"):
        refused = client.post("/users", json={"name": "eve", "admin": value})
        assert refused.status_code == 422, refused.text
        assert "admin" in refused.json()["detail"]
    assert [u["name"] for u in client.get("/users").json()] == ["admin"]
    root = client.post("/users", json={"name": "root", "admin": True})
    assert root.status_code == 201, root.text
    me = client.get("/me", headers=_bearer(root.json()["token"])).json()
    assert me["is_admin"] is True


def test_annotators_read_and_write_only_their_own_corrections(
    client: TestClient, make_project: Callable[[str], str]
) -> None:
    project = make_project("p")
    image = _image(client, project)
    ann, bea = (_user(client, n, project, "annotator") for n in ("ann", "bea"))
    reviewer = _user(client, "rev", project, "reviewer")
    url = f"/projects/{project}/images/{image}"
    as_other = client.put(
        f"{url}/correction", json={"classes": {}, "annotator": "bea"}, headers=_bearer(ann)
    )
    assert as_other.status_code == 403
    mine = client.put(f"{url}/correction", json={"classes": {}}, headers=_bearer(ann))
    assert mine.status_code == 200 and mine.json()["annotator"] == "ann"
    assert client.get(f"{url}/correction", headers=_bearer(ann)).status_code == 200
    assert client.get(f"{url}/correction", headers=_bearer(bea)).status_code == 404
    assert client.get(f"{url}/corrections", headers=_bearer(bea)).json() == []
    assert len(client.get(f"{url}/corrections", headers=_bearer(reviewer)).json()) == 1
    on_behalf = client.put(f"{url}/correction", json={"classes": {}, "annotator": "bea"})
    assert on_behalf.json()["annotator"] == "bea"  # the admin may record in another's name


def test_every_access_to_client_data_is_audited(
    client: TestClient, make_project: Callable[[str], str]
) -> None:
    project = make_project("p")
    image = _image(client, project)
    manager = _user(client, "mia", project, "manager")
    url = f"/projects/{project}/images/{image}"
    draft = client.get(f"{url}/draft", headers=_bearer(manager))
    client.get(f"{url}/file", headers=_bearer(manager))
    client.put(f"{url}/correction", json={"classes": {}}, headers=_bearer(manager))
    client.get(f"/projects/{project}/export", params={"approved_only": "true"})
    client.post(f"/projects/{project}/training-runs")

    audit = client.get(f"/projects/{project}/audit", headers=_bearer(manager)).json()
    mine = {e["action"]: e for e in audit if e["actor"] == "mia"}
    assert set(mine) == {"draft_served", "image_read", "correction_written"}
    assert mine["draft_served"]["image_id"] == image
    assert mine["draft_served"]["details"]["draft_id"] == draft.headers["x-draft-id"]
    admins = {e["action"]: e for e in audit if e["actor"] == "admin"}
    assert {"image_uploaded", "member_set", "exported", "training_queued"} <= set(admins)
    assert admins["exported"]["details"]["filter"]["approved_only"] is True
    assert admins["exported"]["details"]["images"] == 1  # the accepted correction
    only_reads = client.get(
        f"/projects/{project}/audit", params={"action": "image_read", "format": "csv"}
    )
    rows = list(csv.DictReader(io.StringIO(only_reads.text)))
    assert only_reads.headers["content-type"].startswith("text/csv")
    assert [(r["actor"], r["image_id"]) for r in rows] == [("mia", image)]
    global_audit = client.get("/audit", params={"actor": "admin", "action": "user_added"}).json()
    assert [e["details"]["is_admin"] for e in global_audit] == [False]
    assert client.get("/audit", headers=_bearer(manager)).status_code == 403


def test_audit_times_without_an_offset_are_utc_and_impossible_windows_are_422(
    client: TestClient, make_project: Callable[[str], str]
) -> None:
    # A time without an offset, or a date alone, was a 500 (a naive datetime reached the
    # database); so was a time that leaves the calendar once in UTC.
    project = make_project("p")
    everything = client.get("/audit").json()
    assert everything
    for path in ("/audit", f"/projects/{project}/audit"):
        for since in ("2000-01-01", "2000-01-01T00:00:00", "2000-01-01T01:00:00+01:00"):
            answer = client.get(path, params={"since": since})
            assert answer.status_code == 200, answer.text
            assert answer.json()
        assert client.get(path, params={"until": "2000-01-01T00:00:00"}).json() == []
        for params, words in (
            ({"since": "9999-12-31T23:00:00-05:00"}, ("since", "UTC")),
            ({"until": "0001-01-01T00:00:00+01:00"}, ("until", "UTC")),
            ({"since": "2025-01-02", "until": "2025-01-01T12:00:00"}, ("before until",)),
        ):
            answer = client.get(path, params=params)
            assert answer.status_code == 422, answer.text
            assert answer.json()["code"] == "invalid_request"
            assert all(word in answer.json()["detail"] for word in words), answer.json()
    assert client.get("/audit").json()[: len(everything)] == everything


def test_reads_and_token_uses_are_written_in_batches_and_when_the_service_stops(
    storage_settings: StorageSettings,
    service_settings: ServiceSettings,
    security_settings: SecuritySettings,
) -> None:
    """A draft fetch writes nothing itself: its audit entry and the token's last use wait
    for the periodic flush (here: never) or the service's stop, and are then written."""
    rarely = service_settings.model_copy(update={"audit_flush_s": 3600.0})
    app = create_app(storage_settings, rarely, security_settings)
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {admin_token(storage_settings)}"
        project = client.post("/projects", json={"name": "p", "classes": SHAPES_CLASSES})
        image = _image(client, project.json()["id"])
        drafted = client.get(f"/projects/p/images/{image}/draft")
        assert drafted.status_code == 200, drafted.text
        assert _stored(storage_settings, image) == ([], [None])
    assert _stored(storage_settings, image)[0] == ["draft_served"]
    assert None not in _stored(storage_settings, image)[1]


def _stored(storage: StorageSettings, image: str) -> tuple[list[str], list[datetime | None]]:
    """The audit actions stored for ``image`` and the stored last uses of every token."""
    workspace = open_workspace(storage)
    try:
        with workspace.sessions() as session:
            actions = list(
                session.scalars(select(AuditEventRow.action).where(AuditEventRow.image_id == image))
            )
            uses = list(session.scalars(select(ApiTokenRow.last_used_at)))
    finally:
        workspace.engine.dispose()
    return [a for a in actions if a != "image_uploaded"], uses


def test_the_cli_manages_users_and_members(
    storage_settings: StorageSettings,
    security_settings: SecuritySettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PRELABEL_HOME", str(storage_settings.home))
    if storage_settings.database_url:  # the PostgreSQL pass: the CLI must use that database
        monkeypatch.setenv("PRELABEL_DATABASE_URL", storage_settings.database_url)
    get_storage_settings.cache_clear()
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(cli, list(args))
        assert result.exit_code == 0, result.output
        return result.stdout

    try:
        token = run("users", "add", "zoe").strip().splitlines()[-1]
        assert token.startswith("plt_")
        app = create_app(storage_settings, ServiceSettings(), security_settings)
        with TestClient(app) as client:
            assert not (storage_settings.home / ADMIN_TOKEN_FILE).exists()  # users exist
            root = run("users", "add", "root", "--admin").strip().splitlines()[-1]
            body = {"name": "cli-p", "classes": [{"id": 0, "name": "bg"}, {"id": 1, "name": "x"}]}
            assert client.post("/projects", json=body, headers=_bearer(root)).status_code == 201
            assert client.get("/projects/cli-p", headers=_bearer(token)).status_code == 404
            run("members", "add", "--project", "cli-p", "--user", "zoe", "--role", "manager")
            assert "manager" in run("members", "list", "--project", "cli-p")
            assert client.get("/projects/cli-p", headers=_bearer(token)).status_code == 200
            run("members", "remove", "--project", "cli-p", "--user", "zoe")
            assert client.get("/projects/cli-p", headers=_bearer(token)).status_code == 404
            listed = run("users", "list")
            assert "zoe" in listed and token not in listed
            run("users", "revoke", "zoe")
            assert client.get("/me", headers=_bearer(token)).status_code == 401
            audit = client.get("/audit", headers=_bearer(root), params={"action": "member_set"})
            assert [e["actor"] for e in audit.json()] == [f"cli:{getpass.getuser()}"]
            # The CLI may revoke the last admin's tokens: it can issue a new one.
            run("users", "revoke", "root")
            assert client.get("/me", headers=_bearer(root)).status_code == 401
    finally:
        get_storage_settings.cache_clear()
