"""``GET /audit`` (admins) and ``GET /projects/{project}/audit`` (managers): the audit trail."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response

from prelabel.audit import AuditAction, AuditEvent, AuditQuery, events_csv, list_events
from service.auth import CallerDep
from service.deps import WorkspaceDep

router = APIRouter(tags=["audit"])


class AuditFormat(StrEnum):
    JSON = "json"
    CSV = "csv"


def _answer(events: list[AuditEvent], audit_format: AuditFormat) -> Response:
    if audit_format is AuditFormat.CSV:
        return Response(
            events_csv(events),
            media_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="audit.csv"'},
        )
    return JSONResponse([e.model_dump(mode="json") for e in events])


_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"content": {"application/json": {}, "text/csv": {}}}
}


def _query(
    project_id: str | None,
    actor: str | None,
    action: AuditAction | None,
    image: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
) -> AuditQuery:
    return AuditQuery(
        project_id=project_id,
        actor=actor,
        action=action.value if action else None,
        image_id=image,
        since=since,
        until=until,
        limit=limit,
    )


Actor = Annotated[str | None, Query(description="user name (or 'promotion-gate', …)")]
Action = Annotated[AuditAction | None, Query()]
ImageId = Annotated[str | None, Query(description="image id")]
Since = Annotated[datetime | None, Query(description="ISO 8601, inclusive")]
Until = Annotated[datetime | None, Query(description="ISO 8601, exclusive")]
Limit = Annotated[int, Query(ge=1, le=100_000)]
Format = Annotated[AuditFormat, Query(alias="format")]


@router.get("/audit", response_model=list[AuditEvent], responses=_RESPONSES)
def get_audit(
    workspace: WorkspaceDep,
    actor: Actor = None,
    action: Action = None,
    image: ImageId = None,
    since: Since = None,
    until: Until = None,
    limit: Limit = 1000,
    audit_format: Format = AuditFormat.JSON,
) -> Response:
    """Every project's audit trail and the global entries (users, tokens), newest first."""
    query = _query(None, actor, action, image, since, until, limit)
    with workspace.sessions() as session:
        return _answer(list_events(session, query), audit_format)


@router.get("/projects/{project}/audit", response_model=list[AuditEvent], responses=_RESPONSES)
def get_project_audit(
    project: str,
    caller: CallerDep,
    workspace: WorkspaceDep,
    actor: Actor = None,
    action: Action = None,
    image: ImageId = None,
    since: Since = None,
    until: Until = None,
    limit: Limit = 1000,
    audit_format: Format = AuditFormat.JSON,
) -> Response:
    """The project's audit trail, newest first."""
    project_id = caller.checked_project.id
    query = _query(project_id, actor, action, image, since, until, limit)
    with workspace.sessions() as session:
        return _answer(list_events(session, query), audit_format)
