"""``prelabel serve``'s HTTP protocol turns Nagle's algorithm off on every connection,
also on a listening socket bound the way uvicorn binds it for several processes."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

import service.cli
from service.cli import app_of_a_process
from service.http_protocol import NoDelayH11Protocol


def _accepted_nodelay(
    listener: socket.socket, config: uvicorn.Config, protocol_class: type[H11Protocol]
) -> int:
    """TCP_NODELAY of the server side of one connection to ``listener``."""

    async def connect() -> int:
        made: list[H11Protocol] = []
        state = ServerState()

        def protocol() -> H11Protocol:
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
    assert _accepted_nodelay(config.bind_socket(), config, NoDelayH11Protocol) == 1
    # uvicorn's own protocol leaves it off there (if this fails, uvicorn #3149 is fixed and
    # service.http_protocol can go).
    assert _accepted_nodelay(config.bind_socket(), config, H11Protocol) == 0


def test_serve_runs_this_protocol(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PRELABEL_HOME", str(tmp_path))
    given: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: given.update(options))
    service.cli.serve(port=0, processes=1)
    config = uvicorn.Config(app_of_a_process, factory=True, http=given["http"])
    config.load()
    assert config.http_protocol_class is NoDelayH11Protocol
