"""``GET /health``."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text

from service.deps import WorkspaceDep
from service.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/health")
def health(workspace: WorkspaceDep) -> Health:
    """Liveness and database reachability."""
    with workspace.sessions() as session:
        session.execute(text("SELECT 1"))
    return Health(status="ok", database="ok", version="0.1.0")
