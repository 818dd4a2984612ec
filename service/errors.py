"""The one table that maps domain errors to HTTP statuses and stable error codes."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from prelabel.errors import (
    BulkJobNotFound,
    CodecError,
    ConflictError,
    CorrectionNotFound,
    DraftNotFound,
    ExportMismatch,
    Forbidden,
    ImageNotFound,
    ImageTooLarge,
    IntegrationError,
    MemberNotFound,
    ModelNotFound,
    NotAuthenticated,
    NotFoundError,
    PrelabelError,
    ProjectNotFound,
    SchemaError,
    StorageFull,
    TrainingError,
    TrainingRunNotFound,
    UserNotFound,
    ValidationFailed,
)
from service.access_rules import rule_for
from service.pages import error_page

logger = logging.getLogger(__name__)

ERROR_TABLE: dict[type[PrelabelError], tuple[int, str]] = {
    NotAuthenticated: (401, "not_authenticated"),
    Forbidden: (403, "forbidden"),
    UserNotFound: (404, "user_not_found"),
    MemberNotFound: (404, "member_not_found"),
    ProjectNotFound: (404, "project_not_found"),
    ImageNotFound: (404, "image_not_found"),
    DraftNotFound: (404, "draft_not_found"),
    ModelNotFound: (404, "model_not_found"),
    TrainingRunNotFound: (404, "training_run_not_found"),
    BulkJobNotFound: (404, "bulk_job_not_found"),
    CorrectionNotFound: (404, "correction_not_found"),
    NotFoundError: (404, "not_found"),
    ImageTooLarge: (413, "image_too_large"),
    StorageFull: (507, "storage_full"),
    CodecError: (422, "invalid_encoding"),
    SchemaError: (422, "schema_mismatch"),
    ValidationFailed: (422, "invalid_request"),
    ConflictError: (409, "conflict"),
    TrainingError: (422, "training_impossible"),
    IntegrationError: (502, "integration_failed"),
    ExportMismatch: (500, "export_mismatch"),
}


class ErrorOut(BaseModel):
    """The body of every 4xx and 5xx answer."""

    detail: str
    """What is wrong, for a person."""
    code: str
    """A stable code for a program (``image_not_found``, ``invalid_request``, ...)."""


_ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "malformed request",
    401: "no token, or an unknown, revoked or expired one",
    403: "the caller's role does not allow this",
    404: "not found (or not visible to the caller)",
    405: "method not allowed on this path",
    409: "conflicts with the current state",
    413: "upload or image too large",
    415: "unsupported content type",
    422: "invalid request: bad encoding, wrong schema, out-of-range value",
    507: "storage full: nothing was stored, retry when space is back",
}

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut, "description": description}
    for status, description in _ERROR_DESCRIPTIONS.items()
}
"""What every route may answer besides its success (``FastAPI(responses=...)``)."""

_HTTP_CODES: dict[int, str] = {
    400: "invalid_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def status_and_code(error: PrelabelError) -> tuple[int, str]:
    """The HTTP status and error code of ``error``: its nearest class in the table."""
    for cls in type(error).__mro__:
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls]
    return 500, "internal_error"


def _is_page(request: Request) -> bool:
    route = request.scope.get("route")
    path = getattr(route, "path_format", None)
    rule = rule_for(request.method, path) if isinstance(path, str) else None
    return rule is not None and rule.page


async def _handle_domain_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, PrelabelError):
        raise exc
    status, code = status_and_code(exc)
    if status >= 500:
        logger.error("request failed with %s: %s", code, exc, exc_info=exc)
    if _is_page(request):
        return error_page(request, status, code, str(exc))
    headers = {"WWW-Authenticate": 'Bearer realm="prelabel"'} if status == 401 else None
    return JSONResponse({"detail": str(exc), "code": code}, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        location = ".".join(str(part) for part in error.get("loc", ()))
        parts.append(f"{location}: {error.get('msg', 'invalid')}")
    more = len(exc.errors()) - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


async def _handle_validation_error(_request: Request, exc: Exception) -> JSONResponse:
    # FastAPI answers a list of errors by default; every 4xx here has one shape.
    if not isinstance(exc, RequestValidationError):
        raise exc
    body = ErrorOut(detail=_validation_message(exc), code="invalid_request")
    return JSONResponse(body.model_dump(), status_code=422)


async def _handle_http_error(_request: Request, exc: Exception) -> JSONResponse:
    # Starlette's own answers (unknown path, wrong method) in the same shape.
    if not isinstance(exc, StarletteHTTPException):
        raise exc
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    body = ErrorOut(detail=str(exc.detail), code=code)
    return JSONResponse(body.model_dump(), status_code=exc.status_code, headers=exc.headers)


def register_error_handlers(app: FastAPI) -> None:
    """Install the handlers that answer every error as ``{"detail", "code"}``."""
    app.add_exception_handler(PrelabelError, _handle_domain_error)
    app.add_exception_handler(RequestValidationError, _handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, _handle_http_error)
