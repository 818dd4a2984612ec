"""The HTTP protocol and event loop ``prelabel serve`` runs: uvicorn's httptools protocol
on uvloop (uvicorn's "standard" choice, C parsers and a libuv loop), with Nagle's
algorithm off.

Both are chosen for CPU: under a 100-annotator load, py-spy put about a third of the
service processes' samples in the pure-Python h11 parser and asyncio's loop (an overcount:
it includes threads waiting for the GIL); measured directly, a request costs the service
about 4.5% less CPU with these (README, "Load", session 16).

With several processes (``--processes`` > 1) uvicorn binds the listening socket itself,
without ``IPPROTO_TCP``; accepted sockets inherit that, and asyncio then leaves Nagle's
algorithm on for them (uvicorn issue #3149). A response written in two parts (headers,
then body) then waits for the client's delayed ACK: about 40 ms on every keep-alive
request on Linux. Turning ``TCP_NODELAY`` on per connection works whoever bound the socket
and whichever loop runs.
"""

from __future__ import annotations

import asyncio
import socket

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HTTP_PROTOCOL = "service.http_protocol:NoDelayHttpToolsProtocol"
"""What ``uvicorn.run(http=...)`` is given: an import path, so each process resolves it."""

EVENT_LOOP = "uvloop"
"""What ``uvicorn.run(loop=...)`` is given."""


def disable_nagle(transport: asyncio.BaseTransport) -> None:
    """Set ``TCP_NODELAY`` on the transport's socket when it is a TCP one."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class NoDelayHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol; each connection is made with Nagle's algorithm off."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # (The override narrows the transport type exactly as HttpToolsProtocol itself does.)
        disable_nagle(transport)
        super().connection_made(transport)
