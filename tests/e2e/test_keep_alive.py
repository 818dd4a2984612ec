"""A real ``prelabel serve`` keeps an idle client connection open past clients' own idle
timeouts (``PRELABEL_KEEP_ALIVE_S``): uvicorn's default of 5 s equals httpx's keep-alive
expiry, and under load the server then closed connections that clients were reusing."""

from __future__ import annotations

import http.client
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_durability import Service

pytestmark = pytest.mark.e2e


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    running = Service(tmp_path / "home", tmp_path / "serve.log")
    running.start()
    yield running
    running.kill()


def test_an_idle_connection_outlives_uvicorns_default_keep_alive(service: Service) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
    try:
        connection.request("GET", "/health")
        assert connection.getresponse().read() and connection.sock is not None
        first_socket = connection.sock
        time.sleep(6.5)  # past uvicorn's default of 5 s
        connection.request("GET", "/health")  # on the same socket: no reconnect here
        answer = connection.getresponse()
        assert answer.status == 200 and answer.read()
        assert connection.sock is first_socket
    finally:
        connection.close()
