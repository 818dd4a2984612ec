"""The web dashboard: login, project list, project overview, image view (server-rendered).

The pages go through the same access rules as the API (``service.access_rules``,
``page=True``): a project page needs READ_METRICS in that project, and a project the
caller is not a member of is a 404 like one that does not exist.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlsplit

import numpy as np
from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response
from PIL import Image as PILImage

from models.registry import list_versions
from prelabel.access import visible_project_ids
from prelabel.accounts import authenticate
from prelabel.corrections import correction_history, load_correction_mask
from prelabel.database import transaction
from prelabel.drafts import latest_draft, load_draft_confidence, load_draft_mask
from prelabel.images import Image, get_image, load_pixels
from prelabel.ordering import Strategy, next_images
from prelabel.projects import Project, list_projects
from prelabel.report_sections import (
    MetricsFilters,
    annotator_table,
    changed_fraction_histogram,
    correction_records,
    queue_status,
)
from prelabel.reports import project_metrics
from prelabel.schema import LabelSchema
from prelabel.settings import SecuritySettings
from service.admission import COMPUTED_READ_TURN
from service.auth import CallerDep
from service.deps import WorkspaceDep
from service.pages import language, png_data_uri, render
from service.plots import Marker, bar_chart, line_chart
from service.sessions import check_csrf, end_session, start_session

router = APIRouter(tags=["dashboard"], include_in_schema=False)

QUEUE_THUMBNAILS = 6
RECENT_CORRECTIONS = 10


def _safe_next(target: str | None) -> str:
    """Only a local path: a login never redirects to another site."""
    if (
        not target
        or not target.startswith("/")
        or target.startswith("//")
        or urlsplit(target).netloc
    ):
        return "/dashboard"
    return target


@router.get("/login")
def login_form(request: Request, caller: CallerDep, next: str = "/dashboard") -> Response:
    """The login page: one ``token`` field."""
    return render(request, "login.html", next=_safe_next(next), failed=False)


@router.post("/login")
def login(
    request: Request,
    caller: CallerDep,
    workspace: WorkspaceDep,
    token: Annotated[str, Form()],
    csrf: Annotated[str | None, Form()] = None,
    next: Annotated[str, Form()] = "/dashboard",
) -> Response:
    """Check the token; on success set the session cookie and go to ``next``."""
    check_csrf(request, csrf)
    with transaction(workspace.sessions) as session:
        principal = authenticate(session, token.strip())
    if principal is None:
        return render(request, "login.html", status_code=401, next=_safe_next(next), failed=True)
    security: SecuritySettings = request.app.state.security_settings
    response = RedirectResponse(_safe_next(next), status_code=303)
    start_session(request, response, token.strip(), security.session_ttl_s)
    return response


@router.post("/logout")
def logout(
    request: Request, caller: CallerDep, csrf: Annotated[str | None, Form()] = None
) -> Response:
    """End the session (the API token itself stays valid)."""
    check_csrf(request, csrf)
    response = RedirectResponse("/login", status_code=303)
    end_session(response)
    return response


@router.get("/dashboard")
def project_list(request: Request, caller: CallerDep, workspace: WorkspaceDep) -> Response:
    """The projects the caller belongs to (all of them for an admin)."""
    with workspace.sessions() as session:
        visible = visible_project_ids(session, caller.principal)
        projects = [p for p in list_projects(session) if visible is None or p.id in visible]
        rows = [
            {"name": p.name, **queue_status(session, p).model_dump()}
            for p in sorted(projects, key=lambda p: p.name)
        ]
    return render(request, "projects.html", projects=rows, user=caller.name)


@router.get("/dashboard/projects/{project}", dependencies=[COMPUTED_READ_TURN])
def overview(
    request: Request, project: str, caller: CallerDep, workspace: WorkspaceDep
) -> Response:
    """Acceptance and effort over time, distributions, tables, versions, queue, runs."""
    found = caller.checked_project
    with workspace.sessions() as session:
        records = correction_records(session, found, MetricsFilters())
        metrics = project_metrics(session, found, MetricsFilters(), records=records)
        versions = list_versions(session, found.id)
        queue = next_images(
            session, found.id, strategy=Strategy.UNCERTAINTY, limit=QUEUE_THUMBNAILS
        )
    points = metrics.time_series.points
    labels = [p.start.isoformat()[5:] for p in points]
    markers = _version_markers(metrics, [p.start for p in points])
    t_lang = language(request)
    context: dict[str, Any] = {
        "project": found,
        "m": metrics,
        "acceptance_svg": line_chart(
            labels, [p.acceptance_rate for p in points], markers, title="acceptance"
        ),
        "effort_svg": line_chart(
            labels,
            [p.effort_saved.saved_pixel_fraction for p in points],
            markers,
            title="effort saved",
        ),
        "histogram_svg": bar_chart(
            [f"{i / 10:.1f}" for i in range(10)],
            changed_fraction_histogram(records, bins=10),
            title="changed-pixel fraction",
        ),
        "classes": _classes(found.label_schema, metrics.by_class, t_lang),
        "annotators": annotator_table(records),
        "versions": [
            {
                "version": v.version,
                "status": v.status.value,
                "held_out": _held_out(v.metrics),
                "trained_on": len(v.trained_on),
                "parent": v.parent_version,
                "reason": v.reason,
            }
            for v in reversed(versions)
        ],
        "queue": [_thumbnail(workspace, item.image, item.uncertainty) for item in queue],
        "running": [
            r for r in metrics.training_runs.recent if r.outcome.value in ("running", "queued")
        ],
        "recent": list(reversed(records[-RECENT_CORRECTIONS:])),
    }
    return render(request, "overview.html", user=caller.name, **context)


def _version_markers(metrics: Any, starts: list[Any]) -> list[Marker]:
    """A marker in the bucket of each serving-version change within the series."""
    if not starts:
        return []
    from prelabel.report_sections import bucket_start

    period = metrics.time_series.period
    index = {start: i for i, start in enumerate(starts)}
    return [
        Marker(index[bucket], event.version)
        for event in metrics.time_series.version_events
        if (bucket := bucket_start(event.at, period)) in index
    ]


def _held_out(scores: dict[str, Any]) -> float | None:
    for key in ("held_out_miou", "miou", "mean_iou"):
        value = scores.get(key)
        if isinstance(value, int | float):
            return float(value)
    return None


def _classes(schema: LabelSchema, by_class: dict[str, Any], lang: str) -> list[dict[str, Any]]:
    """Per-class IoU rows, names in ``lang``, worst first (classes never seen last)."""
    rows = [
        {
            "name": schema.class_by_id(int(class_id)).name_in(lang),
            "mean_iou": summary.mean_iou,
            "corrections": summary.corrections,
        }
        for class_id, summary in by_class.items()
    ]
    return sorted(rows, key=lambda r: (r["mean_iou"] is None, r["mean_iou"] or 0.0, r["name"]))


def _thumbnail(workspace: Any, image: Image, uncertainty: float | None) -> dict[str, Any]:
    pixels = PILImage.fromarray(load_pixels(workspace.blobs, image))
    pixels.thumbnail((64, 64))
    return {
        "id": image.id,
        "filename": image.filename,
        "uncertainty": uncertainty,
        "thumbnail": png_data_uri(pixels),
    }


@router.get("/dashboard/projects/{project}/images/{image}")
def image_view(
    request: Request, project: str, image: str, caller: CallerDep, workspace: WorkspaceDep
) -> Response:
    """Image, draft, confidence and latest correction side by side, the disagreement in red."""
    found: Project = caller.checked_project
    schema = found.label_schema
    with workspace.sessions() as session:
        shown = get_image(session, found.id, image)
        history = correction_history(session, shown)
        current = next((c for c in history if c.is_current), None)
        draft = None
        if current is not None and current.draft_id is not None:
            from prelabel.drafts import get_draft

            draft = get_draft(session, found.id, current.draft_id)
        if draft is None:
            draft = latest_draft(session, shown, model_version=None, any_version=True)
    pixels = load_pixels(workspace.blobs, shown)
    panels: dict[str, str | None] = {"image": png_data_uri(PILImage.fromarray(pixels))}
    draft_mask = load_draft_mask(workspace.blobs, draft) if draft else None
    correction_mask = load_correction_mask(workspace.blobs, current) if current else None
    panels["draft"] = _mask_png(draft_mask, schema) if draft_mask is not None else None
    panels["confidence"] = (
        png_data_uri(_confidence_image(load_draft_confidence(workspace.blobs, draft)))
        if draft
        else None
    )
    panels["correction"] = (
        _mask_png(correction_mask, schema) if correction_mask is not None else None
    )
    disagreeing = 0
    panels["disagreement"] = None
    if draft_mask is not None and correction_mask is not None:
        changed = (draft_mask != correction_mask) & (correction_mask != schema.ignore_index)
        disagreeing = int(changed.sum())
        panels["disagreement"] = png_data_uri(_disagreement(pixels, changed))
    legend = [{"name": c.name_in(language(request)), "color": c.color} for c in schema.classes]
    return render(
        request,
        "image.html",
        user=caller.name,
        project=found,
        image=shown,
        draft=draft,
        panels=panels,
        disagreeing=disagreeing,
        history=history,
        legend=legend,
    )


def _mask_png(mask: Any, schema: LabelSchema) -> str:
    indexed = PILImage.fromarray(np.asarray(mask, dtype=np.uint8), mode="P")
    indexed.putpalette(schema.palette())
    return png_data_uri(indexed.convert("RGB"))


def _confidence_image(confidence: Any) -> PILImage.Image:
    return PILImage.fromarray((np.clip(confidence, 0.0, 1.0) * 255).astype(np.uint8))


def _disagreement(pixels: Any, changed: Any) -> PILImage.Image:
    """The image in grey with the pixels where draft and correction differ in red."""
    grey = pixels if pixels.ndim == 2 else pixels[..., :3].mean(axis=2)
    rgb = np.repeat((np.asarray(grey, dtype=np.float32) * 0.6)[..., None], 3, axis=2)
    rgb[changed] = (220, 30, 40)
    return PILImage.fromarray(rgb.astype(np.uint8))
