"""Acknowledged means durable: a real ``prelabel serve`` is SIGKILLed in the middle of a
burst of corrections, restarted, and every correction that got a 2xx is there.

8 clients send 200 corrections (25 each, round robin over 8 images, every mask
different); once 60 are acknowledged the service is killed with SIGKILL. After a
restart on the same home: each acknowledged correction is stored with exactly the
pixels sent, every correction and image row points at a blob that decodes whole,
and SQLite's ``PRAGMA integrity_check`` is ``ok``. The kill point is a count of
answers, not a time, so the test does not depend on the machine's speed.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image
from sqlalchemy import select, text

from prelabel.codecs import decode_image, decode_index_png
from prelabel.settings import StorageSettings
from prelabel.tables import CorrectionRow, ImageRow
from prelabel.workspace import open_workspace
from tests.synthetic import SHAPES_CLASSES, png_bytes, shapes_sample

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CLIENTS = 8
PER_CLIENT = 25
KILL_AFTER_ACKED = 60


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Service:
    """``prelabel serve`` in a subprocess on ``home``; runs this checkout's code."""

    def __init__(self, home: Path, log: Path, *, args: Sequence[str] = ()) -> None:
        self.home = home
        self.log = log
        self.args = list(args)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env |= {"PRELABEL_HOME": str(self.home), "PRELABEL_PORT": str(self.port)}
        command = [
            sys.executable,
            "-c",
            "from prelabel.cli import main; main()",
            "serve",
            *self.args,
        ]
        with self.log.open("ab") as log:
            # Its own process group, so that a kill also reaches the processes it started
            # (``--processes``), whatever state the test left it in.
            self.process = subprocess.Popen(
                command, env=env, stdout=log, stderr=log, cwd=REPO, start_new_session=True
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"prelabel serve exited:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        pytest.fail(f"prelabel serve not up:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the service and every process it started (a no-op once they ended)."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def token(self) -> str:
        return (self.home / "admin-token").read_text().strip()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def service(home: Path, tmp_path: Path) -> Iterator[Service]:
    running = Service(home, tmp_path / "serve.log")
    running.start()
    yield running
    running.kill()


def _mask(client: int, index: int) -> npt.NDArray[np.uint8]:
    """A different 64x64 mask (classes 0..2) for every request."""
    rng = np.random.default_rng(client * 1000 + index)
    return rng.integers(0, 3, (64, 64), dtype=np.uint8)


def _burst(
    service: Service,
    images: list[str],
    project: str,
    client: int,
    acked: dict[str, tuple[str, int, int]],
    lock: threading.Lock,
    enough: threading.Event,
) -> None:
    headers = {"Authorization": f"Bearer {service.token()}"}
    with httpx.Client(base_url=service.url, headers=headers, timeout=60.0) as http:
        for index in range(PER_CLIENT):
            image = images[(client + index) % len(images)]
            data = png_bytes(_mask(client, index))
            url = f"/projects/{project}/images/{image}/correction"
            try:
                answer = http.put(url, files={"mask": ("m.png", data)})
            except httpx.HTTPError:
                return  # the service is gone
            if answer.is_success:
                with lock:
                    acked[answer.json()["id"]] = (image, client, index)
                    if len(acked) >= KILL_AFTER_ACKED:
                        enough.set()


def test_acknowledged_corrections_survive_sigkill(service: Service, home: Path) -> None:
    headers = {"Authorization": f"Bearer {service.token()}"}
    with httpx.Client(base_url=service.url, headers=headers, timeout=60.0) as http:
        project = http.post("/projects", json={"name": "durable", "classes": SHAPES_CLASSES})
        project_id = project.json()["id"]
        files = [("files", (f"{i}.png", png_bytes(shapes_sample(i)[0]))) for i in range(8)]
        uploaded = http.post(f"/projects/{project_id}/images", files=files)
        images = [image["id"] for image in uploaded.json()["images"]]

    acked: dict[str, tuple[str, int, int]] = {}
    lock, enough = threading.Lock(), threading.Event()
    clients = [
        threading.Thread(target=_burst, args=(service, images, project_id, c, acked, lock, enough))
        for c in range(CLIENTS)
    ]
    for thread in clients:
        thread.start()
    while not enough.is_set() and any(thread.is_alive() for thread in clients):
        enough.wait(0.05)
    service.kill()
    for thread in clients:
        thread.join()
    assert KILL_AFTER_ACKED <= len(acked) < CLIENTS * PER_CLIENT, "the kill was not mid-burst"

    service.start()
    workspace = open_workspace(StorageSettings(home=home))
    try:
        with workspace.sessions() as session:
            stored = {row.id: row for row in session.scalars(select(CorrectionRow))}
            image_rows = list(session.scalars(select(ImageRow)))
            integrity = session.execute(text("PRAGMA integrity_check")).scalar_one()
        assert integrity == "ok"
        for correction_id, (image, client, index) in acked.items():
            row = stored[correction_id]
            assert row.image_id == image
            mask = decode_index_png(workspace.blobs.get(row.mask_key), max_pixels=64 * 64)
            assert np.array_equal(mask, _mask(client, index)), correction_id
        for row in stored.values():  # acknowledged or not, nothing half-written
            decode_index_png(workspace.blobs.get(row.mask_key), max_pixels=64 * 64)
        for image_row in image_rows:
            decode_image(workspace.blobs.get(image_row.blob_key), max_pixels=64 * 64)
    finally:
        workspace.engine.dispose()

    with httpx.Client(base_url=service.url, headers=headers, timeout=60.0) as http:
        history = http.get(f"/projects/{project_id}/images/{images[0]}/corrections")
        assert history.status_code == 200
        ids = {c["id"] for c in history.json()}
        assert {cid for cid, (image, _, _) in acked.items() if image == images[0]} <= ids
        current = http.get(f"/projects/{project_id}/images/{images[0]}/correction")
        assert np.asarray(Image.open(io.BytesIO(current.content))).shape == (64, 64)
