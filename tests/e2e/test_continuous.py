"""Continuous fine-tuning end to end: the gate rejects a worse candidate, manual rollback and
pinning are audited, and a worker killed mid-run leaves the serving model alone and its job is
retried on restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import select

from prelabel.drafts import get_draft
from prelabel.jobs import JobTask
from prelabel.settings import StorageSettings, WorkerSettings
from prelabel.split import is_held_out
from prelabel.tables import JobRow
from prelabel.workspace import open_workspace
from tests.backends import opened_workspace, storage_environment
from tests.e2e.test_loop import TINY_TRAINING
from tests.polling import wait_for
from tests.synthetic import png_bytes, shapes_sample
from training.worker import run_worker

pytestmark = pytest.mark.e2e

N_IMAGES = 28
HELD_OUT_SHARE = TINY_TRAINING["data"]["held_out_share"]


def _labelled_project(client: TestClient, make_project, name: str) -> tuple[str, list[str], list]:
    project = make_project(name)
    policy = client.put(f"/projects/{project}/training-policy", json={"enabled": False})
    assert policy.status_code == 200, policy.text
    samples = [shapes_sample(seed) for seed in range(N_IMAGES)]
    upload = client.post(
        f"/projects/{project}/images",
        files=[
            ("files", (f"img{i}.png", png_bytes(image), "image/png"))
            for i, (image, _) in enumerate(samples)
        ],
    )
    ids = [item["id"] for item in upload.json()["images"]]
    for image_id, (_, mask) in zip(ids, samples, strict=True):
        _put_mask(client, project, image_id, mask)
    return project, ids, samples


def _put_mask(client: TestClient, project: str, image_id: str, mask: np.ndarray) -> None:
    response = client.put(
        f"/projects/{project}/images/{image_id}/correction",
        files={"mask": ("m.png", png_bytes(mask), "image/png")},
        data={"annotator": "ana"},
    )
    assert response.status_code == 200, response.text


def _run(
    client: TestClient,
    project: str,
    storage: StorageSettings,
    config: Path,
    kind: str = "incremental",
) -> dict:
    queued = client.post(f"/projects/{project}/training-runs", json={"kind": kind}).json()
    with opened_workspace(storage) as workspace:
        assert run_worker(workspace, config, WorkerSettings(), once=True) >= 1
    return client.get(f"/projects/{project}/training-runs/{queued['id']}").json()


def _serving(client: TestClient, project: str) -> str:
    serving = [
        m["version"]
        for m in client.get(f"/projects/{project}/models").json()
        if m["status"] == "serving"
    ]
    assert len(serving) == 1
    return serving[0]


def _drafts_jobs(storage: StorageSettings, project: str) -> list[str]:
    workspace = open_workspace(storage)
    try:
        with workspace.sessions() as session:
            rows = session.scalars(
                select(JobRow.status).where(
                    JobRow.project_id == project, JobRow.task == JobTask.DRAFTS
                )
            )
            return list(rows)
    finally:
        workspace.engine.dispose()


def _tiny_config(tmp_path: Path, **optim: int) -> Path:
    config = tmp_path / f"train-{len(optim)}.yaml"
    spec = {**TINY_TRAINING, "optim": {**TINY_TRAINING["optim"], **optim}}
    config.write_text(yaml.safe_dump(spec))
    return config


def test_gate_rejects_worse_candidate_then_rollback_and_pin(
    client: TestClient, make_project, tmp_path: Path, storage_settings: StorageSettings
) -> None:
    config = _tiny_config(tmp_path)
    project, ids, samples = _labelled_project(client, make_project, "gate")
    first = _run(client, project, storage_settings, config, kind="full")
    assert (first["status"], first["model_version"]) == ("succeeded", "v1")
    assert _serving(client, project) == "v1"
    # The gate's promotion is audited and queued the new version's drafts, like a manual one.
    gate = client.get(f"/projects/{project}/audit").json()[0]
    assert (gate["action"], gate["actor"]) == ("promote", "promotion-gate")
    assert gate["details"]["training_run_id"] == first["id"] and gate["details"]["automatic"]
    assert _drafts_jobs(storage_settings, project) == ["succeeded"]

    # Corrupt the labels of the training side only: the held-out truth stays clean.
    rng = np.random.default_rng(0)
    for image_id, (_, mask) in zip(ids, samples, strict=True):
        if not is_held_out(image_id, HELD_OUT_SHARE):
            _put_mask(client, project, image_id, rng.permutation(mask.ravel()).reshape(mask.shape))
    worse = _run(client, project, storage_settings, config, kind="full")
    assert worse["status"] == "succeeded" and worse["model_version"] == "v2"
    assert worse["candidate_miou"] < worse["serving_miou"]
    assert "worse" in worse["decision"]
    v2_evidence = client.get(f"/projects/{project}/models/v2").json()["metrics"]
    assert v2_evidence["promotion_evidence"]["losses"] > v2_evidence["promotion_evidence"]["wins"]
    assert set(v2_evidence["held_out"]["per_image"]) == set(
        v2_evidence["promotion_evidence"]["per_image"]
    )
    v2 = client.get(f"/projects/{project}/models/v2").json()
    assert v2["status"] == "rejected" and v2["parent_version"] == "v1"
    assert v2["metrics"]["serving_held_out"]["images"] == len(v2["held_out"]) > 0
    assert _serving(client, project) == "v1"

    # A manual promotion overrides the gate and is audited; pinning freezes the choice.
    promoted = client.post(
        f"/projects/{project}/models/v2/promote", json={"actor": "lead", "reason": "inspect v2"}
    )
    assert promoted.status_code == 200 and _serving(client, project) == "v2"
    pinned = client.post(
        f"/projects/{project}/models/v1/pin", json={"actor": "lead", "reason": "roll back"}
    )
    assert pinned.status_code == 200 and _serving(client, project) == "v1"
    assert client.get(f"/projects/{project}").json()["pinned_version"] == "v1"
    blocked = client.post(f"/projects/{project}/models/v2/promote", json={"actor": "x"})
    assert blocked.status_code == 409
    for image_id, (_, mask) in zip(ids, samples, strict=True):
        _put_mask(client, project, image_id, mask)
    frozen = _run(client, project, storage_settings, config)
    assert "pinned" in frozen["decision"] and _serving(client, project) == "v1"
    unpinned = client.request(
        "DELETE", f"/projects/{project}/models/v1/pin", json={"actor": "lead"}
    )
    assert unpinned.status_code == 200
    changes = {"unpin", "pin", "promote", "set_training_policy"}
    events = client.get(f"/projects/{project}/audit").json()
    audit = [(e["action"], e["actor"]) for e in events if e["action"] in changes]
    assert audit == [  # the authenticated caller, whatever the bodies claimed
        ("unpin", "admin"),
        ("pin", "admin"),
        ("promote", "admin"),
        ("promote", "promotion-gate"),
        ("set_training_policy", "admin"),
    ]
    runs = client.get(f"/projects/{project}/training-runs").json()
    assert [r["kind"] for r in runs] == ["incremental", "full", "full"]


def test_killed_worker_leaves_serving_model_and_job_is_retried(
    client: TestClient, make_project, tmp_path: Path, storage_settings: StorageSettings
) -> None:
    fast = _tiny_config(tmp_path)
    project, _, _ = _labelled_project(client, make_project, "crash")
    assert _run(client, project, storage_settings, fast, kind="full")["model_version"] == "v1"

    slow = _tiny_config(tmp_path, epochs_full=500, epochs_incremental=500, min_steps_full=1)
    queued = client.post(f"/projects/{project}/training-runs").json()
    env = {
        **os.environ,
        **storage_environment(storage_settings),
        "PRELABEL_TRAINING_CONFIG": str(slow),
        "PRELABEL_HEARTBEAT_INTERVAL_S": "0.5",
        "PRELABEL_POLL_INTERVAL_S": "0.2",
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "prelabel.cli", "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    run_url = f"/projects/{project}/training-runs/{queued['id']}"
    try:
        wait_for(
            lambda: client.get(run_url).json()["progress"].get("epoch", 0) >= 2,
            120,
            "epoch 2 of the run",
            interval_s=0.5,
        )
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    assert client.get(run_url).json()["status"] == "running"
    assert _serving(client, project) == "v1"

    # A restarted worker sees the dead one's run, fails it and completes a retry.
    with opened_workspace(storage_settings) as workspace:
        assert run_worker(workspace, fast, WorkerSettings(), once=True) >= 1
    killed = client.get(run_url).json()
    assert killed["status"] == "failed" and "died" in killed["error"]
    runs = client.get(f"/projects/{project}/training-runs").json()
    retry = next(r for r in runs if r["retry_of"] == queued["id"])
    assert retry["status"] == "succeeded" and retry["attempts"] == 2
    assert retry["model_version"] == "v2"
    assert [m["version"] for m in client.get(f"/projects/{project}/models").json()] == ["v2", "v1"]


def test_self_training_uses_confident_drafts_of_unlabelled_training_side_images(
    client: TestClient, make_project, tmp_path: Path, storage_settings: StorageSettings
) -> None:
    project, _, _ = _labelled_project(client, make_project, "self")
    extra = [shapes_sample(100 + seed) for seed in range(12)]
    uploaded = client.post(
        f"/projects/{project}/images",
        files=[
            ("files", (f"new{i}.png", png_bytes(im), "image/png"))
            for i, (im, _) in enumerate(extra)
        ],
    ).json()["images"]
    unlabelled = {image["id"] for image in uploaded}
    assert (
        _run(client, project, storage_settings, _tiny_config(tmp_path), kind="full")[
            "model_version"
        ]
        == "v1"
    )  # the worker also precomputed v1's drafts of the new images

    spec = {**TINY_TRAINING, "data": {**TINY_TRAINING["data"], "self_training": True}}
    config = tmp_path / "self-training.yaml"
    config.write_text(yaml.safe_dump(spec))
    run = _run(client, project, storage_settings, config)
    detail = client.get(f"/projects/{project}/models/{run['model_version']}").json()

    drafts = detail["metrics"]["self_trained_on_drafts"]
    with opened_workspace(storage_settings) as workspace, workspace.sessions() as session:
        images = {get_draft(session, _project_id(client, project), d).image_id for d in drafts}
    expected = {i for i in unlabelled if not is_held_out(i, HELD_OUT_SHARE)}
    assert images == expected and expected
    assert not set(detail["trained_on"]) & set(drafts)  # corrections and drafts kept apart


def _project_id(client: TestClient, project: str) -> str:
    return str(client.get(f"/projects/{project}").json()["id"])
