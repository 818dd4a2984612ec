"""The dashboard in a real browser: Playwright driving Debian's chromium (no download).

Serves the app with uvicorn on a free port, logs in with a token, opens the overview
and an image view of the fixture project, checks numbers, switches to German, and
checks that another project's page is a 404. Screenshots go to ``docs/screenshots``
(committed for the README).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from prelabel.settings import AuthMode, SecuritySettings, ServiceSettings, StorageSettings
from prelabel.workspace import Workspace
from service.app import create_app
from tests.conftest import admin_token
from tests.dashboard_fixture import build_fixture_project

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"

pytestmark = pytest.mark.browser


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def served(storage_settings: StorageSettings, workspace: Workspace) -> Iterator[str]:
    app = create_app(
        storage_settings,
        ServiceSettings(max_image_pixels=512 * 512),
        SecuritySettings(auth=AuthMode.ON),
    )
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_dashboard_in_chromium(
    served: str, storage_settings: StorageSettings, workspace: Workspace
) -> None:
    if not CHROMIUM.exists():
        pytest.fail("needs Debian's chromium: apt-get install chromium (make browser-deps)")
    from playwright.sync_api import sync_playwright

    fixture = build_fixture_project(workspace)
    admin = {"Authorization": f"Bearer {admin_token(storage_settings)}"}
    created = httpx.post(f"{served}/users", json={"name": "mia"}, headers=admin)
    mia = created.raise_for_status().json()["token"]
    httpx.put(f"{served}/projects/fixture/members/mia", json={"role": "manager"}, headers=admin)
    httpx.post(
        f"{served}/projects",
        json={"name": "secret", "classes": [{"id": 0, "name": "bg"}]},
        headers=admin,
    ).raise_for_status()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        context = browser.new_context(locale="en-US", viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.goto(f"{served}/dashboard")
        assert "/login" in page.url
        page.fill("input[name=token]", mia)
        page.click("button[type=submit]")
        page.click("text=fixture")
        assert page.inner_text("#acceptance") == "50.0 %"
        assert page.inner_text("#effort") == "50.0 %"
        assert page.inner_text("#queue") == "2"
        assert page.locator("#acceptance-plot circle.point").count() == 3
        assert page.locator("#acceptance-plot line.marker").count() == 2
        assert page.locator("#annotators tr").count() == 3
        page.screenshot(path=str(SCREENSHOTS / "overview.png"), full_page=True)
        page.goto(f"{served}/dashboard/projects/fixture/images/{fixture.images[2].id}")
        assert page.inner_text("#disagreeing") == "4"
        page.screenshot(path=str(SCREENSHOTS / "image.png"), full_page=True)
        page.click("a[hreflang=de]")
        assert "Abweichung" in page.content()
        answer = page.goto(f"{served}/dashboard/projects/secret")
        assert answer is not None and answer.status == 404
        ghost = page.goto(f"{served}/dashboard/projects/ghost")
        assert ghost is not None and ghost.status == 404
        browser.close()
