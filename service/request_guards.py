"""Checks every request passes before its handler: the JSON body size, the query string
and NUL characters in path and query parameters.

A JSON body is parsed whole in memory, so its size is capped (``max_json_bytes``)
before it is read, from ``Content-Length`` or while it streams in. A query
parameter that the route does not take is refused rather than silently ignored:
a typo (``?fromat=json``) would otherwise answer something the caller did not ask for.
A NUL character (``%00``) in a path or query parameter is refused before anything
looks the value up: PostgreSQL cannot hold NUL in text and fails the query.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from prelabel.errors import ValidationFailed
from service.access_rules import rule_for
from service.http_middleware import HttpMiddleware


def _is_json(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            return bool(value.split(b";")[0].strip().lower().endswith(b"json"))
    return False


class JsonBodyLimit(HttpMiddleware):
    """ASGI middleware: a JSON request body over ``max_bytes`` is answered 413.

    The count runs as the body streams in, so at most ``max_bytes`` plus one chunk
    is read, whatever ``Content-Length`` claims.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        super().__init__(app)
        self.max_bytes = max_bytes

    def _too_large(self) -> HTTPException:
        return HTTPException(413, f"JSON body over the limit of {self.max_bytes} bytes")

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _is_json(scope):
            await self.app(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large()
            return message

        await self.app(scope, counted, send)


def _query_aliases(dependant: Dependant) -> set[str]:
    names: set[str] = set()
    for param in dependant.query_params:
        model = param.field_info.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            # A query-parameter model (``Annotated[Model, Query()]``): its fields are the names.
            names |= {info.alias or name for name, info in model.model_fields.items()}
        else:
            names.add(param.alias)
    for sub in dependant.dependencies:
        names |= _query_aliases(sub)
    return names


def reject_unknown_query_parameters(request: Request) -> None:
    """Refuse query parameters the route does not take (app-wide dependency).

    Raises:
        ValidationFailed: Naming the unknown parameters and the ones the route takes.
    """
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    rule = rule_for(request.method, route.path_format)
    if rule is not None and rule.page:
        return  # HTML pages for browsers: extra parameters (``lang``, …) are theirs to ignore
    allowed = _query_aliases(route.dependant)
    unknown = sorted(set(request.query_params) - allowed)
    if unknown:
        takes = ", ".join(sorted(allowed)) if allowed else "none"
        raise ValidationFailed(
            f"unknown query parameter(s) {', '.join(unknown)}; "
            f"{request.method} {route.path_format} takes: {takes}"
        )


def reject_nul_characters(request: Request) -> None:
    """Refuse a NUL character in a path or query parameter (app-wide dependency, run before
    the access check looks the project up).

    No id, name or filter value holds NUL, and PostgreSQL cannot compare one (a 500).

    Raises:
        ValidationFailed: Naming the parameter.
    """
    for kind, params in (
        ("path", list(request.path_params.items())),
        ("query", request.query_params.multi_items()),
    ):
        for name, value in params:
            if isinstance(value, str) and "\x00" in value:
                raise ValidationFailed(
                    f"{kind} parameter {name!r} holds a NUL character (U+0000): {value[:80]!r}"
                )
