"""``prelabel serve --processes N``: several service processes on one port, set up once
(one admin, one secret key), their Prometheus series added up, stopped together."""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_durability import Service

pytestmark = pytest.mark.e2e

PROCESSES = 2
MAX_REQUESTS = 400


def _children(pid: int) -> set[int]:
    """Process ids whose parent is ``pid`` (from /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # the process ended meanwhile
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _serving(pids: set[int]) -> set[int]:
    """Those of ``pids`` that run the service (not multiprocessing's helpers)."""
    serving = set()
    for pid in pids:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"resource_tracker" not in command:
            serving.add(pid)
    return serving


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    running = Service(
        tmp_path / "home", tmp_path / "serve.log", args=["--processes", str(PROCESSES)]
    )
    running.start()
    yield running
    running.kill()


def test_several_processes_share_one_setup_and_one_metrics_view(service: Service) -> None:
    assert service.process is not None
    workers = _serving(_children(service.process.pid))
    assert len(workers) == PROCESSES, service.log.read_text()[-3000:]

    # Set up once before the processes started: one admin, whose token every process knows.
    headers = {"Authorization": f"Bearer {service.token()}"}
    for _ in range(4):
        with httpx.Client(base_url=service.url, headers=headers) as client:
            users = client.get("/users")
            assert users.status_code == 200, users.text
            assert [u["name"] for u in users.json()] == ["admin"]

    # Each request on a new connection, until both processes have answered some (their
    # metric files name them); the scrape adds up every process's counts, whichever answers.
    folder = service.home / "prometheus-multiproc"
    sent = 0
    while _answered(folder) != workers and sent < MAX_REQUESTS:
        with httpx.Client(base_url=service.url, headers=headers) as client:
            assert client.get(f"/projects/absent-{sent}").status_code == 404
        sent += 1
    assert _answered(folder) == workers
    with httpx.Client(base_url=service.url, headers=headers) as client:
        scrape = client.get("/metrics").text
    counted = re.search(r'^prelabel_http_errors_total\{code="404"\} (\S+)$', scrape, re.M)
    assert counted is not None and float(counted.group(1)) == sent

    service.process.send_signal(signal.SIGTERM)
    assert service.process.wait(timeout=60) == 0
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()], "outlived serve"


def _answered(folder: Path) -> set[int]:
    """The processes that wrote a counter (``counter_<pid>.db``)."""
    return {int(f.stem.split("_")[1]) for f in folder.glob("counter_*.db")}
