"""Scale-out end to end: two ``prelabel serve`` replicas and several ``prelabel worker``
processes on one database (PostgreSQL in the CI's PostgreSQL pass) and one S3 store (moto's
server). Corrections, promotions, training jobs, drafts jobs and Label Studio webhook events
cross processes only through the database and the store."""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from label_studio_sdk.converter import brush
from PIL import Image
from sqlalchemy import select

from prelabel.accounts import ADMIN_TOKEN_FILE
from prelabel.settings import StorageSettings
from prelabel.tables import DraftRow, JobRow
from tests.backends import free_port, opened_workspace, storage_environment, wait_for_http
from tests.e2e.test_loop import TINY_TRAINING
from tests.polling import wait_for
from tests.synthetic import SHAPES_CLASSES, png_bytes, shapes_sample

pytestmark = pytest.mark.e2e

N_IMAGES = 24
LS_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="tag" toName="image">
    <Label value="disk" background="#ff0000"/>
    <Label value="square" background="#00ff00"/>
  </BrushLabels>
</View>"""


def _config(tmp_path: Path, name: str, **optim: int) -> Path:
    path = tmp_path / f"{name}.yaml"
    spec = {**TINY_TRAINING, "optim": {**TINY_TRAINING["optim"], **optim}}
    path.write_text(yaml.safe_dump(spec))
    return path


class Deployment:
    """The processes of one deployment, all on the same stores; stopped at the end."""

    def __init__(self, settings: StorageSettings, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.env = {
            **os.environ,
            **storage_environment(settings),
            "PRELABEL_POLL_INTERVAL_S": "0.2",
            "PRELABEL_HEARTBEAT_INTERVAL_S": "0.5",
            "PRELABEL_TORCH_THREADS": "1",
            "PRELABEL_PREDICTOR_THREADS": "1",
        }
        self.processes: list[subprocess.Popen[bytes]] = []
        self.clients: list[httpx.Client] = []

    def _start(self, args: list[str], log: str, **env: str) -> subprocess.Popen[bytes]:
        with (self.tmp_path / log).open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "prelabel.cli", *args],
                env={**self.env, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.processes.append(process)
        return process

    def replica(self, name: str) -> httpx.Client:
        port = free_port()
        process = self._start(["serve", "--port", str(port)], f"replica-{name}.log")
        url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{url}/health/ready", process, timeout_s=120)
        # Auth is on: the first replica's start made the admin and wrote its token.
        token = (Path(self.env["PRELABEL_HOME"]) / ADMIN_TOKEN_FILE).read_text().strip()
        client = httpx.Client(
            base_url=url, timeout=120, headers={"Authorization": f"Bearer {token}"}
        )
        self.clients.append(client)
        return client

    def worker(self, name: str, config: Path) -> subprocess.Popen[bytes]:
        return self._start(["worker"], f"worker-{name}.log", PRELABEL_TRAINING_CONFIG=str(config))

    def stop(self) -> None:
        for client in self.clients:
            client.close()
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)


@pytest.fixture
def deployment(
    s3_storage_settings: StorageSettings, database_url: str | None, tmp_path: Path
) -> Iterator[Deployment]:
    settings = s3_storage_settings.model_copy(update={"database_url": database_url})
    started = Deployment(settings, tmp_path)
    yield started
    started.stop()


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def _labelled_project(a: httpx.Client, b: httpx.Client) -> tuple[str, list[str]]:
    created = a.post("/projects", json={"name": "replicated", "classes": SHAPES_CLASSES})
    assert created.status_code == 201, created.text
    project = created.json()["id"]
    assert a.put(f"/projects/{project}/training-policy", json={"enabled": False}).is_success
    samples = [shapes_sample(seed) for seed in range(N_IMAGES)]
    files = [
        ("files", (f"img{i}.png", png_bytes(im), "image/png")) for i, (im, _) in enumerate(samples)
    ]
    ids = [
        item["id"] for item in a.post(f"/projects/{project}/images", files=files).json()["images"]
    ]
    for image_id, (_, mask) in zip(ids, samples, strict=True):
        put = a.put(
            f"/projects/{project}/images/{image_id}/correction",
            files={"mask": ("m.png", png_bytes(mask), "image/png")},
            data={"annotator": "ana"},
        )
        assert put.status_code == 200, put.text
        # Written through replica A, read back through replica B (database + S3).
        read = b.get(f"/projects/{project}/images/{image_id}/correction")
        assert read.status_code == 200, read.text
        assert np.array_equal(_decode(read.content), mask)
    unlabelled = [
        ("files", (f"new{i}.png", png_bytes(shapes_sample(100 + i)[0]), "image/png"))
        for i in range(4)
    ]
    assert a.post(f"/projects/{project}/images", files=unlabelled).status_code == 201
    return project, ids


def _run(client: httpx.Client, project: str, run_id: str) -> dict[str, Any]:
    return dict(client.get(f"/projects/{project}/training-runs/{run_id}").json())


def _jobs(settings_env: dict[str, str], database_url: str | None) -> list[JobRow]:
    settings = StorageSettings(home=Path(settings_env["PRELABEL_HOME"]), database_url=database_url)
    with opened_workspace(settings) as workspace, workspace.sessions() as session:
        return list(session.scalars(select(JobRow)))


def _drafts_per_image_and_version(deployment: Deployment, database_url: str | None) -> Counter:
    settings = StorageSettings(
        home=Path(deployment.env["PRELABEL_HOME"]), database_url=database_url
    )
    with opened_workspace(settings) as workspace, workspace.sessions() as session:
        rows = session.execute(select(DraftRow.image_id, DraftRow.model_version)).all()
    return Counter((image_id, version) for image_id, version in rows)


def _served_version(client: httpx.Client, project: str, image_id: str) -> str | None:
    response = client.get(f"/projects/{project}/images/{image_id}/draft")
    assert response.status_code == 200, response.text
    return response.headers.get("x-model-version")


def _annotation(task_id: int, step: int, image: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    results = [
        {
            "id": f"r{class_id}",
            "from_name": "tag",
            "to_name": "image",
            "type": "brushlabels",
            "original_width": mask.shape[1],
            "original_height": mask.shape[0],
            "value": {
                "format": "rle",
                "rle": brush.mask2rle(((mask == class_id) * 255).astype(np.uint8)),
                "brushlabels": [label],
            },
        }
        for class_id, label in ((1, "disk"), (2, "square"))
        if (mask == class_id).any()
    ]
    data_url = "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()
    return {
        "action": "ANNOTATION_CREATED" if step == 0 else "ANNOTATION_UPDATED",
        "annotation": {
            "id": 100 + task_id,
            "task": task_id,
            "project": 1,
            "result": results,
            "completed_by": {"id": step, "email": f"annotator{step}@example.org"},
        },
        "task": {"id": task_id, "data": {"image": data_url}},
        "project": {"id": 1, "label_config": LS_CONFIG},
    }


def _labelstudio_events_are_processed_once_in_order(a: httpx.Client, b: httpx.Client) -> None:
    setup = {"project": "1.1732900000", "schema": LS_CONFIG, "hostname": None}
    assert a.post("/labelstudio/setup", json=setup).status_code == 200
    image, mask = shapes_sample(7)
    steps = 6
    for step in range(steps):  # alternate replicas; each answers at once, processes after
        replica = (a, b)[step % 2]
        sent = replica.post("/labelstudio/webhook", json=_annotation(5, step, image, mask))
        assert sent.json()["status"] == "queued", sent.text
    images_url = "/projects/labelstudio-1/images"
    wait_for(lambda: bool(b.get(images_url).json()), 60, "the task's image registered")
    [ls_image] = b.get(images_url).json()
    history_url = f"/projects/labelstudio-1/images/{ls_image['id']}/corrections"
    wait_for(lambda: len(b.get(history_url).json()) >= steps, 60, "webhook events processed")
    time.sleep(1)  # a duplicate, if any, would land now
    history = b.get(history_url).json()
    assert [c["annotator"] for c in reversed(history)] == [
        f"annotator{step}@example.org" for step in range(steps)
    ]


def test_two_replicas_and_workers_share_one_database_and_one_s3_store(
    deployment: Deployment, tmp_path: Path, database_url: str | None
) -> None:
    a, b = deployment.replica("a"), deployment.replica("b")
    project, ids = _labelled_project(a, b)
    _labelstudio_events_are_processed_once_in_order(a, b)
    assert _served_version(b, project, ids[0]) is None  # no model yet

    # Two workers poll together: the run is claimed exactly once, its drafts made once.
    fast = _config(tmp_path, "fast")
    workers = [deployment.worker(f"fast{i}", fast) for i in range(2)]
    first = b.post(f"/projects/{project}/training-runs", json={"kind": "full"}).json()
    wait_for(lambda: _run(a, project, first["id"])["status"] == "succeeded", 600, "first run")
    wait_for(
        lambda: all(job.status == "succeeded" for job in _jobs(deployment.env, database_url)),
        300,
        "drafts job",
    )
    jobs = _jobs(deployment.env, database_url)
    assert sorted(job.task for job in jobs) == ["drafts", "train"]
    assert [job.attempts for job in jobs] == [1, 1]
    drafts = _drafts_per_image_and_version(deployment, database_url)
    unlabelled = [
        i["id"] for i in a.get(f"/projects/{project}/images").json() if not i["has_correction"]
    ]
    assert len(unlabelled) == 4
    assert [drafts[(image_id, "v1")] for image_id in unlabelled] == [1] * 4  # made once each
    # The promotion is served by both replicas without a restart.
    assert _served_version(a, project, ids[0]) == _served_version(b, project, ids[0]) == "v1"

    # Graceful stop: idle workers exit 0 on SIGTERM.
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
    assert [worker.wait(timeout=60) for worker in workers] == [0, 0]

    # A worker killed mid-run: another worker recovers the run and completes a retry.
    slow = deployment.worker("slow", _config(tmp_path, "slow", epochs_incremental=500))
    second = a.post(f"/projects/{project}/training-runs").json()
    progressed = lambda: _run(b, project, second["id"])["progress"].get("epoch", 0) >= 1  # noqa: E731
    wait_for(progressed, 300, "slow run started")
    slow.send_signal(signal.SIGKILL)
    slow.wait(timeout=30)
    rescuer = deployment.worker("rescuer", fast)
    wait_for(lambda: _run(a, project, second["id"])["status"] == "failed", 120, "recovery")
    runs = b.get(f"/projects/{project}/training-runs").json()
    retry = next(run for run in runs if run["retry_of"] == second["id"])
    wait_for(lambda: _run(a, project, retry["id"])["status"] == "succeeded", 600, "retry")
    [retried] = [job for job in _jobs(deployment.env, database_url) if job.id == retry["id"]]
    assert retried.worker is not None and retried.worker.endswith(f":{rescuer.pid}")

    # Manual promotions through one replica are served by the other at once.
    models = a.get(f"/projects/{project}/models").json()
    serving = next(m["version"] for m in models if m["status"] == "serving")
    for version in [v for v in ("v2", "v1") if v != serving] + [serving]:
        promoted = a.post(f"/projects/{project}/models/{version}/promote", json={"actor": "lead"})
        assert promoted.status_code == 200, promoted.text
        assert _served_version(b, project, ids[0]) == version
    assert b.get("/health/ready").json()["status"] == "ready"
