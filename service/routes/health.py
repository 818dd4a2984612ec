"""``GET /health`` (liveness) and ``GET /health/ready`` (readiness)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from prelabel.workspace import check_stores
from service.deps import WorkspaceDep
from service.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/health")
def health(workspace: WorkspaceDep) -> Health:
    """Liveness and database reachability."""
    with workspace.sessions() as session:
        session.execute(text("SELECT 1"))
    return Health(status="ok", database="ok", version="0.1.0")


@router.get(
    "/health/ready",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "a store is unavailable"}},
)
def ready(workspace: WorkspaceDep) -> JSONResponse:
    """Readiness for a load balancer: 200 when the database and the blob store both answer,
    503 (with what failed) otherwise."""
    checks = check_stores(workspace)
    ok = all(value == "ok" for value in checks.values())
    body = Readiness(status="ready" if ok else "unavailable", **checks)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)
