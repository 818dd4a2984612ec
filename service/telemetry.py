"""Prometheus metrics of the service: ``GET /metrics`` in the text exposition format.

Two kinds of series:

* Events counted in the process that sees them (drafts served, their latency, HTTP
  errors). With ``PROMETHEUS_MULTIPROC_DIR`` set (several uvicorn/gunicorn worker
  processes), prometheus-client writes them to files in that folder and the scrape
  aggregates every process's files (``MultiProcessCollector``); the folder must exist,
  be empty at start and be set before the service starts.
* State read from the database at scrape time (corrections received, acceptance rate,
  queue length, training runs by outcome and their duration, worker heartbeat age):
  every process answers the same, so they are multi-process safe by construction.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from fastapi import FastAPI
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session
from starlette.types import Message, Receive, Scope, Send

from prelabel.drafts import Draft
from prelabel.tables import CorrectionRow, ImageRow, JobRow, ProjectRow, utcnow
from prelabel.workspace import Workspace
from service.http_middleware import HttpMiddleware

logger = logging.getLogger(__name__)

DRAFTS_SERVED = Counter(
    "prelabel_drafts_served",
    "Drafts served, by project, model version, format and whether the draft was precomputed.",
    ["project", "model_version", "format", "source"],
)
DRAFT_LATENCY = Histogram(
    "prelabel_draft_latency_seconds",
    "Time to answer a draft request (a computed draft includes inference).",
    ["project", "source"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
REFINEMENTS = Counter(
    "prelabel_refinements",
    "Refinement calls (POST …/refine, Label Studio smart tags, CVAT interactor), by method.",
    ["project", "method", "source"],
)
REFINE_CLICKS = Counter(
    "prelabel_refine_clicks",
    "Clicks carried by refinement calls (each call carries every click of its interaction).",
    ["project", "method"],
)
REFINE_LATENCY = Histogram(
    "prelabel_refine_latency_seconds",
    "Time to refine one class (the method's work: GrabCut or the click model).",
    ["project", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0),
)
EVENT_LOOP_LAG_NAME = "prelabel_event_loop_lag_seconds"
EVENT_LOOP_LAG = Histogram(
    EVENT_LOOP_LAG_NAME,
    "How much later than asked the service's event loop woke from a short sleep: the wait "
    "of a request before the application sees it.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
HTTP_ERRORS = Counter(
    "prelabel_http_errors", "HTTP answers with a status of 400 or more, by status.", ["code"]
)


def observe_draft(
    project: str, draft: Draft, *, served_as: str, precomputed: bool, seconds: float
) -> None:
    """Count one draft served (``served_as``: png, json, confidence, labelstudio, refine)."""
    source = "precomputed" if precomputed else "computed"
    version = draft.model_version or "none"
    DRAFTS_SERVED.labels(project, version, served_as, source).inc()
    DRAFT_LATENCY.labels(project, source).observe(seconds)


def observe_loop_lag(seconds: float) -> None:
    """Record one event-loop wake-up that came ``seconds`` late."""
    EVENT_LOOP_LAG.observe(seconds)


def observe_refinement(project: str, *, method: str, source: str, clicks: int, ms: float) -> None:
    """Count one refinement call, its clicks and its latency, by method (grabcut, model)."""
    REFINEMENTS.labels(project, method, source).inc()
    REFINE_CLICKS.labels(project, method).inc(clicks)
    REFINE_LATENCY.labels(project, method).observe(ms / 1000.0)


class DatabaseCollector(Collector):
    """Series computed from the database at each scrape (see the module docstring)."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace

    def collect(self) -> Iterator[Metric]:
        with self.workspace.sessions() as session:
            names = {
                row[0]: row[1] for row in session.execute(select(ProjectRow.id, ProjectRow.name))
            }
            yield from _corrections(session, names)
            yield _queue(session, names)
            yield from _training_runs(session, names)
            yield _heartbeats(session, utcnow())


def _corrections(session: Session, names: dict[str, str]) -> Iterator[Metric]:
    received = CounterMetricFamily(
        "prelabel_corrections_received",
        "Corrections stored (every version, superseded ones included), by source.",
        labels=["project", "source"],
    )
    rows = session.execute(
        select(CorrectionRow.project_id, CorrectionRow.source, func.count()).group_by(
            CorrectionRow.project_id, CorrectionRow.source
        )
    )
    for project_id, source, count in rows:
        received.add_metric([names.get(project_id, project_id), source], count)
    yield received
    rate = GaugeMetricFamily(
        "prelabel_acceptance_rate",
        "Share of current corrections whose draft was accepted (changed within the threshold).",
        labels=["project"],
    )
    accepted = case((CorrectionRow.accepted.is_(True), 1.0), else_=0.0)
    rates = session.execute(
        select(CorrectionRow.project_id, func.avg(accepted))
        .where(CorrectionRow.is_current.is_(True), CorrectionRow.accepted.is_not(None))
        .group_by(CorrectionRow.project_id)
    )
    for project_id, average in rates:
        rate.add_metric([names.get(project_id, project_id)], float(average))
    yield rate


def _queue(session: Session, names: dict[str, str]) -> Metric:
    queue = GaugeMetricFamily(
        "prelabel_queue_length", "Images without a current correction.", labels=["project"]
    )
    corrected = select(CorrectionRow.image_id).where(CorrectionRow.is_current.is_(True))
    rows = {
        row[0]: row[1]
        for row in session.execute(
            select(ImageRow.project_id, func.count())
            .where(ImageRow.id.not_in(corrected))
            .group_by(ImageRow.project_id)
        )
    }
    for project_id, name in sorted(names.items(), key=lambda item: item[1]):
        queue.add_metric([name], rows.get(project_id, 0))
    return queue


def _training_runs(session: Session, names: dict[str, str]) -> Iterator[Metric]:
    runs = CounterMetricFamily(
        "prelabel_training_runs",
        "Training runs by status (queued, running, succeeded, failed).",
        labels=["project", "status"],
    )
    duration = SummaryMetricFamily(
        "prelabel_training_run_duration_seconds",
        "Wall time of finished training runs, from start to finish.",
        labels=["project", "status"],
    )
    rows = session.execute(
        select(JobRow.project_id, JobRow.status, JobRow.started_at, JobRow.finished_at).where(
            JobRow.task == "train"
        )
    )
    counts: dict[tuple[str, str], int] = {}
    spans: dict[tuple[str, str], list[float]] = {}
    for project_id, status, started, finished in rows:
        key = (names.get(project_id, project_id), status)
        counts[key] = counts.get(key, 0) + 1
        if started is not None and finished is not None:
            spans.setdefault(key, []).append((finished - started).total_seconds())
    for key, count in sorted(counts.items()):
        runs.add_metric(list(key), count)
    for key, values in sorted(spans.items()):
        duration.add_metric(list(key), count_value=len(values), sum_value=sum(values))
    yield runs
    yield duration


def _heartbeats(session: Session, now: datetime) -> Metric:
    age = GaugeMetricFamily(
        "prelabel_worker_heartbeat_age_seconds",
        "Seconds since each training worker last reported (from the jobs it ran).",
        labels=["worker"],
    )
    rows = session.execute(
        select(JobRow.worker, func.max(JobRow.heartbeat_at))
        .where(JobRow.worker.is_not(None), JobRow.heartbeat_at.is_not(None))
        .group_by(JobRow.worker)
    )
    for worker, last in rows:
        if worker is None or last is None:
            continue
        if last.tzinfo is None:  # SQLite drops the zone of an aggregate
            last = last.replace(tzinfo=now.tzinfo)
        age.add_metric([worker], max((now - last).total_seconds(), 0.0))
    return age


def exposition(workspace: Workspace, multiproc_dir: Path | None) -> bytes:
    """The text exposition: process series (aggregated over processes when
    ``multiproc_dir`` is set) followed by the database series."""
    if multiproc_dir is not None:
        processes = CollectorRegistry()
        MultiProcessCollector(processes, path=str(multiproc_dir))  # type: ignore[no-untyped-call]
        events = generate_latest(processes)
    else:
        events = generate_latest(REGISTRY)
    state = CollectorRegistry(auto_describe=False)
    state.register(DatabaseCollector(workspace))
    return events + generate_latest(state)


class ErrorCounter(HttpMiddleware):
    """ASGI middleware counting every answer of 400 or more (an unhandled exception: 500)."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 400:
                HTTP_ERRORS.labels(str(message["status"])).inc()
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except Exception:
            HTTP_ERRORS.labels("500").inc()
            raise


def install_error_counter(app: FastAPI) -> None:
    """Count every answer of 400 or more (an unhandled exception counts as a 500)."""
    app.add_middleware(ErrorCounter)
