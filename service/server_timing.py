"""The ``Server-Timing`` header: how long the service spent on a request before answering.

Every HTTP answer carries ``Server-Timing: app;dur=<ms>`` (W3C Server Timing), measured
from the moment the request reaches the application to the moment its answer starts:
authentication, waiting for a worker thread or a computed-read turn, the route's work.
Browsers' developer tools show it next to the request; a client that also measures the
whole round trip can tell time in the service from time on the way (event loop, network,
its own scheduling), as ``prelabel bench load`` does.
"""

from __future__ import annotations

import time

from starlette.types import Message, Receive, Scope, Send

from service.http_middleware import HttpMiddleware

HEADER = b"server-timing"
METRIC = "app"


def server_timing_value(seconds: float) -> bytes:
    """The header's value for ``seconds`` spent in the service (milliseconds, 0.1 ms)."""
    return f"{METRIC};dur={seconds * 1000:.1f}".encode("ascii")


class ServerTiming(HttpMiddleware):
    """ASGI middleware adding ``Server-Timing: app;dur=…`` to every HTTP answer.

    Outermost in the stack, so that the time covers every other middleware as well.
    """

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((HEADER, server_timing_value(time.perf_counter() - started)))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, timed_send)
