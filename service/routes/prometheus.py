"""``GET /metrics``: the Prometheus exposition (admins, or anyone if PRELABEL_METRICS_PUBLIC)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.auth import CallerDep
from service.deps import SettingsDep, WorkspaceDep
from service.telemetry import exposition

router = APIRouter(tags=["operations"])


@router.get("/metrics", response_class=Response)
def get_prometheus_metrics(
    caller: CallerDep, workspace: WorkspaceDep, settings: SettingsDep
) -> Response:
    """Drafts served and their latency, corrections, acceptance rate, queue length,
    training runs and their duration, worker heartbeat age, HTTP errors."""
    body = exposition(workspace, settings.prometheus_multiproc_dir)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
