"""How long the dashboard's project overview takes to render with many corrections.

Builds a project of ``--corrections`` corrected images (rows written in bulk: the
overview reads only rows, never masks) spread over 60 days, two model versions and
eight annotators, plus a few queued images with real pixels for the thumbnails; then
renders ``GET /dashboard/projects/{p}`` ``--repeats`` times through the app and writes
p50/p95 to JSON. Reference measured in the same run: ``GET /projects/{p}/metrics``.

    python -m bench.dashboard_overview [--corrections 10000] [--quick] [--out F.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from sqlalchemy import insert

from prelabel.accounts import ADMIN_TOKEN_FILE
from prelabel.database import transaction
from prelabel.images import add_image
from prelabel.projects import ProjectSpec, create_project
from prelabel.settings import AuthMode, SecuritySettings, ServiceSettings, StorageSettings
from prelabel.tables import CorrectionRow, DraftRow, ImageRow, new_id
from prelabel.workspace import Workspace, open_workspace

logger = logging.getLogger(__name__)
CLASSES = [
    {"id": 0, "name": "background", "color": "#000000"},
    {"id": 1, "name": "road", "color": "#ff00ff", "translations": {"de": "Straße"}},
    {"id": 2, "name": "building", "color": "#00ffff", "translations": {"de": "Gebäude"}},
]


def _metrics(rng: np.random.Generator) -> dict[str, object]:
    changed = int(rng.integers(0, 2000))
    return {
        "per_class_iou": {"0": float(rng.uniform(0.8, 1)), "1": float(rng.uniform(0.3, 1))},
        "mean_iou": float(rng.uniform(0.5, 1)),
        "pixel_agreement": 1 - changed / 65536,
        "changed_pixel_fraction": changed / 65536,
        "changed_pixels": changed,
        "changed_regions": int(rng.integers(0, 12)),
        "accepted": changed < 655,
        "strokes": int(rng.integers(0, 12)),
        "brush_strokes": int(rng.integers(0, 10)),
        "scratch_changed_pixels": changed + int(rng.integers(1000, 9000)),
        "scratch_changed_regions": int(rng.integers(5, 20)),
    }


def build(workspace: Workspace, corrections: int) -> str:
    """The project; returns its name."""
    rng = np.random.default_rng(0)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    with transaction(workspace.sessions) as session:
        spec = ProjectSpec.model_validate({"name": "bench", "classes": CLASSES})
        project = create_project(session, spec, actor="bench")
        for i in range(6):
            pixels = rng.integers(0, 255, (64, 64), dtype=np.uint8)
            add_image(
                session,
                workspace.blobs,
                project_id=project.id,
                filename=f"queued{i}.png",
                data=_png(pixels),
                max_pixels=10**6,
                actor="bench",
            )
        images, drafts, rows = [], [], []
        for i in range(corrections):
            at = start + timedelta(minutes=int(i * 60 * 24 * 60 / corrections))
            image_id, draft_id = new_id(), new_id()
            images.append(
                dict(
                    id=image_id,
                    project_id=project.id,
                    filename=f"{i}.png",
                    width=256,
                    height=256,
                    channels=1,
                    sha256="0" * 64,
                    blob_key="none",
                    created_at=at - timedelta(hours=2),
                )
            )
            version = "v1" if i < corrections // 2 else "v2"
            drafts.append(
                dict(
                    id=draft_id,
                    project_id=project.id,
                    image_id=image_id,
                    model_version=version,
                    mask_key="none",
                    confidence_key="none",
                    mean_confidence=0.8,
                    latency_ms=5.0,
                    created_at=at - timedelta(hours=1),
                )
            )
            metrics = _metrics(rng)
            rows.append(
                dict(
                    id=new_id(),
                    project_id=project.id,
                    image_id=image_id,
                    draft_id=draft_id,
                    model_version=version,
                    annotator=f"a{i % 8}",
                    source="api",
                    lead_time_s=float(rng.uniform(5, 300)),
                    mask_key="none",
                    is_current=True,
                    metrics=metrics,
                    accepted=metrics["accepted"],
                    clicks=0,
                    created_at=at,
                )
            )
        session.execute(insert(ImageRow), images)
        session.execute(insert(DraftRow), drafts)
        session.execute(insert(CorrectionRow), rows)
    return project.name


def _png(pixels: np.ndarray) -> bytes:  # type: ignore[type-arg]
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _time(client: TestClient, url: str, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        answer = client.get(url)
        times.append(time.perf_counter() - started)
        if answer.status_code != 200:
            raise RuntimeError(f"{url} answered {answer.status_code}: {answer.text[:200]}")
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corrections", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="500 corrections, 3 repeats")
    parser.add_argument("--out", type=Path, default=Path("bench/out/dashboard_overview.json"))
    args = parser.parse_args(argv)
    corrections, repeats = (500, 3) if args.quick else (args.corrections, args.repeats)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as home:
        storage = StorageSettings(home=Path(home))
        workspace = open_workspace(storage)
        name = build(workspace, corrections)
        app_module = __import__("service.app", fromlist=["create_app"])
        app = app_module.create_app(storage, ServiceSettings(), SecuritySettings(auth=AuthMode.ON))
        with TestClient(app) as client:
            token = (storage.home / ADMIN_TOKEN_FILE).read_text().strip()
            client.headers["Authorization"] = f"Bearer {token}"
            overview = _time(client, f"/dashboard/projects/{name}", repeats)
            reference = _time(client, f"/projects/{name}/metrics", repeats)
        workspace.engine.dispose()
    result = {
        "benchmark": "dashboard_overview",
        "corrections": corrections,
        "repeats": repeats,
        "overview_p50_s": float(np.percentile(overview, 50)),
        "overview_p95_s": float(np.percentile(overview, 95)),
        "metrics_api_p50_s": float(np.percentile(reference, 50)),
        "ratio_overview_to_metrics_api": float(np.median(overview) / np.median(reference)),
        "hardware": {
            "machine": platform.machine(),
            "processor": platform.processor(),
            "python": platform.python_version(),
        },
        "measured_at": datetime.now(UTC).isoformat(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    logger.warning("%s", json.dumps(result))


if __name__ == "__main__":
    main()
