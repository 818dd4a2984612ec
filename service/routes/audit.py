"""``GET /audit`` (admins) and ``GET /projects/{project}/audit`` (managers): the audit trail."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, field_validator, model_validator

from prelabel.audit import AuditAction, AuditEvent, AuditQuery, events_csv, list_events
from prelabel.tables import as_utc, check_window
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


class AuditParams(BaseModel):
    """The filters and format of an audit listing (query parameters)."""

    actor: str | None = Field(default=None, description="user name (or 'promotion-gate', …)")
    action: AuditAction | None = None
    image: str | None = Field(default=None, description="image id")
    since: datetime | None = Field(
        default=None, description="ISO 8601, inclusive; without an offset it is UTC"
    )
    until: datetime | None = Field(
        default=None, description="ISO 8601, exclusive; without an offset it is UTC"
    )
    limit: int = Field(default=1000, ge=1, le=100_000)
    format: AuditFormat = AuditFormat.JSON

    @field_validator("since", "until")
    @classmethod
    def _to_utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else as_utc(value)

    @model_validator(mode="after")
    def _check_window(self) -> AuditParams:
        check_window(self.since, self.until)
        return self

    def query(self, project_id: str | None) -> AuditQuery:
        """The core query for these filters, within one project or everywhere (None)."""
        return AuditQuery(
            project_id=project_id,
            actor=self.actor,
            action=self.action.value if self.action else None,
            image_id=self.image,
            since=self.since,
            until=self.until,
            limit=self.limit,
        )


Params = Annotated[AuditParams, Query()]


@router.get("/audit", response_model=list[AuditEvent], responses=_RESPONSES)
def get_audit(workspace: WorkspaceDep, params: Params) -> Response:
    """Every project's audit trail and the global entries (users, tokens), newest first.

    Reads are listed from the moment this process served them; those served by other
    processes within their last ``audit_flush_s``.
    """
    workspace.deferred.flush(workspace.sessions)
    with workspace.sessions() as session:
        return _answer(list_events(session, params.query(None)), params.format)


@router.get("/projects/{project}/audit", response_model=list[AuditEvent], responses=_RESPONSES)
def get_project_audit(
    project: str, caller: CallerDep, workspace: WorkspaceDep, params: Params
) -> Response:
    """The project's audit trail, newest first (reads as in ``GET /audit``)."""
    workspace.deferred.flush(workspace.sessions)
    with workspace.sessions() as session:
        events = list_events(session, params.query(caller.checked_project.id))
    return _answer(events, params.format)
