"""``prelabel serve``'s HTTP protocol (httptools, on uvloop) turns Nagle's algorithm off on
every connection, also on a listening socket bound the way uvicorn binds it for several
processes."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

import service.cli
from service.cli import app_of_a_process
from service.http_protocol import NoDelayHttpToolsProtocol


def _accepted_nodelay(
    listener: socket.socket, config: uvicorn.Config, protocol_class: type[HttpToolsProtocol]
) -> int:
    """TCP_NODELAY of the server side of one connection to ``listener``."""

    async def connect() -> int:
        made: list[HttpToolsProtocol] = []
        state = ServerState()

        def protocol() -> HttpToolsProtocol:
            made.append(protocol_class(config, state, {}))
            return made[-1]

        server = await asyncio.get_running_loop().create_server(protocol, sock=listener)
        host, port = listener.getsockname()[:2]
        _, writer = await asyncio.open_connection(host, port)
        for _ in range(100):
            if made and made[0].transport is not None:
                break
            await asyncio.sleep(0.01)
        accepted = made[0].transport.get_extra_info("socket")
        flag = int(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()
        made[0].transport.close()
        server.close()
        await server.wait_closed()
        return flag

    return asyncio.run(connect())


def test_connections_on_a_listener_bound_for_several_processes_have_nagle_off(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PRELABEL_HOME", str(tmp_path))
    config = uvicorn.Config(app_of_a_process, factory=True, host="127.0.0.1", port=0)
    config.load()
    # What uvicorn's multiprocess supervisor hands each process: bound without IPPROTO_TCP,
    # so asyncio does not set TCP_NODELAY on its connections itself (uvicorn 0.54).
    assert _accepted_nodelay(config.bind_socket(), config, NoDelayHttpToolsProtocol) == 1
    # uvicorn's own protocol leaves it off there (if this fails, uvicorn #3149 is fixed and
    # service.http_protocol can go).
    assert _accepted_nodelay(config.bind_socket(), config, HttpToolsProtocol) == 0


def test_serve_runs_this_protocol(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PRELABEL_HOME", str(tmp_path))
    given: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: given.update(options))
    service.cli.serve(port=0, processes=1)
    config = uvicorn.Config(app_of_a_process, factory=True, http=given["http"])
    config.load()
    assert config.http_protocol_class is NoDelayHttpToolsProtocol
    assert given["loop"] == "uvloop"


def test_serve_answers_over_http_with_this_protocol_and_loop(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A real server with the protocol and loop ``serve`` picks answers a request."""
    monkeypatch.setenv("PRELABEL_HOME", str(tmp_path))
    given: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: given.update(options))
    service.cli.serve(port=0, processes=1)
    config = uvicorn.Config(
        app_of_a_process,
        factory=True,
        host="127.0.0.1",
        port=0,
        http=given["http"],
        loop=given["loop"],
        log_config=None,
    )
    server = uvicorn.Server(config)
    listener = config.bind_socket()
    host, port = listener.getsockname()[:2]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        for _ in range(500):
            if server.started:
                break
            time.sleep(0.01)
        response = httpx.get(f"http://{host}:{port}/health", timeout=10)
        assert response.status_code == 200
        # The listening server is the loop's own object: uvloop's, not asyncio's.
        assert type(server.servers[0]).__module__.startswith("uvloop")
    finally:
        server.should_exit = True
        thread.join(timeout=10)
