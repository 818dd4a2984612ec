"""The worker's graceful stop: a training run in progress goes back to the queue."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import yaml
from fastapi.testclient import TestClient

from prelabel.jobs import JobStatus, claim_job, claim_next_job
from prelabel.tables import JobRow
from prelabel.workspace import Workspace
from tests.e2e.test_loop import TINY_TRAINING
from tests.synthetic import png_bytes, shapes_sample
from training.config import load_training_config
from training.worker import execute_run


def test_a_stopping_worker_releases_its_run_for_another_worker(
    client: TestClient,
    make_project: Callable[[str], str],
    workspace: Workspace,
    tmp_path: Path,
) -> None:
    project = make_project("stopping")
    samples = [shapes_sample(seed) for seed in range(8)]
    files = [
        ("files", (f"{i}.png", png_bytes(im), "image/png")) for i, (im, _) in enumerate(samples)
    ]
    ids = [
        i["id"] for i in client.post(f"/projects/{project}/images", files=files).json()["images"]
    ]
    for image_id, (_, mask) in zip(ids, samples, strict=True):
        put = client.put(
            f"/projects/{project}/images/{image_id}/correction",
            files={"mask": ("m.png", png_bytes(mask), "image/png")},
            data={"annotator": "ana"},
        )
        assert put.status_code == 200, put.text
    queued = client.post(f"/projects/{project}/training-runs", json={"kind": "full"}).json()
    config_path = tmp_path / "train.yaml"
    config_path.write_text(yaml.safe_dump(TINY_TRAINING))
    run = claim_job(workspace.sessions, queued["id"], "stopping-worker")
    stop = threading.Event()
    stop.set()  # SIGTERM arrived: the run stops at its first progress report

    status = execute_run(workspace, run, load_training_config(config_path), stop=stop)

    assert status is JobStatus.QUEUED
    with workspace.sessions() as session:
        row = session.get(JobRow, run.id)
        assert row is not None
        assert (row.status, row.worker, row.started_at, row.attempts) == ("queued", None, None, 1)
    taken = claim_next_job(workspace.sessions, "other-worker")
    assert taken is not None and (taken.id, taken.worker) == (run.id, "other-worker")
    assert client.get(f"/projects/{project}/models").json() == []  # nothing was registered
