"""The one table that maps domain errors to HTTP statuses and stable error codes."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from prelabel.errors import (
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
    CorrectionNotFound: (404, "correction_not_found"),
    NotFoundError: (404, "not_found"),
    ImageTooLarge: (413, "image_too_large"),
    CodecError: (422, "invalid_encoding"),
    SchemaError: (422, "schema_mismatch"),
    ValidationFailed: (422, "invalid_request"),
    ConflictError: (409, "conflict"),
    TrainingError: (422, "training_impossible"),
    IntegrationError: (502, "integration_failed"),
    ExportMismatch: (500, "export_mismatch"),
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


def register_error_handlers(app: FastAPI) -> None:
    """Install the domain-error handler on ``app``."""
    app.add_exception_handler(PrelabelError, _handle_domain_error)
