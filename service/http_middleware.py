"""The shape shared by the service's plain ASGI middlewares: HTTP requests only."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send


class HttpMiddleware:
    """Plain ASGI middleware that handles HTTP requests (``handle``) and passes every other
    scope (lifespan, websocket) straight through.

    Plain ASGI rather than ``@app.middleware("http")``: Starlette's ``BaseHTTPMiddleware``
    streams every response through an extra task and queue, which under load cost the
    service's event loop more than the requests themselves (README, "Load").
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.handle(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one HTTP request; by default, pass it on unchanged."""
        await self.app(scope, receive, send)
