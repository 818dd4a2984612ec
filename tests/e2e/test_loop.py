"""The pre-labeling loop end to end, through HTTP and a real worker with a tiny model:
create project → upload → empty draft → correct → train → the new version serves → metrics."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient
from PIL import Image

from prelabel.settings import StorageSettings, WorkerSettings
from tests.backends import opened_workspace
from tests.synthetic import png_bytes, shapes_sample
from tests.tiny import TINY_NETWORK
from training.worker import run_worker

pytestmark = pytest.mark.e2e

TINY_TRAINING = {
    "data": {"held_out_share": 0.25, "crop_px": 64, "batch_size": 8},
    "model": TINY_NETWORK,
    "optim": {
        "lr": 0.01,
        "epochs_full": 25,
        "epochs_incremental": 5,
        "min_steps_full": 120,
        "min_steps_incremental": 1,
    },
}


def _decode_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def _iou(a: np.ndarray, b: np.ndarray, class_id: int) -> float:
    union = np.logical_or(a == class_id, b == class_id).sum()
    return float(np.logical_and(a == class_id, b == class_id).sum() / union) if union else 1.0


def _correct(
    client: TestClient, project: str, image_id: str, mask: np.ndarray, draft_id: str
) -> dict:
    response = client.put(
        f"/projects/{project}/images/{image_id}/correction",
        files={"mask": ("mask.png", png_bytes(mask), "image/png")},
        data={"annotator": "ana", "lead_time_s": "12.5", "draft_id": draft_id},
    )
    assert response.status_code == 200, response.text
    return response.json()


def _train(client: TestClient, project: str, storage: StorageSettings, config: Path) -> dict:
    queued = client.post(f"/projects/{project}/training-runs")
    assert queued.status_code == 202, queued.text
    assert queued.json()["status"] == "queued"
    # The training run, then the drafts job a promotion queues.
    with opened_workspace(storage) as workspace:
        assert run_worker(workspace, config, WorkerSettings(poll_interval_s=0.1), once=True) >= 1
    run = client.get(f"/projects/{project}/training-runs/{queued.json()['id']}").json()
    assert run["status"] == "succeeded", run
    return run


def test_loop_train_draft_correct_retrain(
    client: TestClient, make_project, tmp_path: Path, storage_settings: StorageSettings
) -> None:
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(TINY_TRAINING))
    project = make_project("loop")
    samples = [shapes_sample(seed) for seed in range(28)]
    upload = client.post(
        f"/projects/{project}/images",
        files=[
            ("files", (f"img{i}.png", png_bytes(image), "image/png"))
            for i, (image, _) in enumerate(samples)
        ],
    )
    assert upload.status_code == 201, upload.text
    ids = [item["id"] for item in upload.json()["images"]]

    # Cold start: the draft is empty and says so.
    first = client.get(f"/projects/{project}/images/{ids[0]}/draft")
    assert first.status_code == 200
    assert "X-Model-Version" not in first.headers
    assert (_decode_png(first.content) == 0).all()

    for i in range(24):
        draft = client.get(f"/projects/{project}/images/{ids[i]}/draft?format=json").json()
        assert draft["model_version"] is None
        result = _correct(client, project, ids[i], samples[i][1], draft["draft_id"])
        assert result["metrics"]["changed_pixel_fraction"] == pytest.approx(
            float((samples[i][1] != 0).mean())
        )

    run = _train(client, project, storage_settings, config)
    assert run["model_version"] == "v1"
    models = client.get(f"/projects/{project}/models").json()
    assert [(m["version"], m["status"]) for m in models] == [("v1", "serving")]

    # The promotion queued precomputed drafts: the queue ranks them by uncertainty.
    queue = client.get(f"/projects/{project}/queue?strategy=uncertainty&limit=10").json()
    assert sorted(q["id"] for q in queue) == sorted(ids[24:])
    assert all(q["model_version"] == "v1" and q["draft_id"] for q in queue)
    scores = [q["uncertainty"] for q in queue]
    assert scores == sorted(scores, reverse=True)
    sequential = client.get(f"/projects/{project}/queue?strategy=sequential&limit=2").json()
    assert [q["id"] for q in sequential] == ids[24:26]
    precomputed = {q["id"]: q["draft_id"] for q in queue}

    # The new version serves without a restart, and its drafts beat the empty ones.
    new_ious = []
    for i in range(24, 28):
        response = client.get(f"/projects/{project}/images/{ids[i]}/draft")
        assert response.headers["X-Model-Version"] == "v1"
        assert response.headers["X-Draft-Id"] == precomputed[ids[i]]
        draft_mask = _decode_png(response.content)
        new_ious.append(np.mean([_iou(draft_mask, samples[i][1], c) for c in (1, 2)]))
        result = _correct(client, project, ids[i], samples[i][1], response.headers["X-Draft-Id"])
        assert result["model_version"] == "v1"
    assert np.mean(new_ious) > 0.5

    metrics = client.get(f"/projects/{project}/metrics").json()
    assert metrics["by_model_version"]["v1"]["corrections"] == 4
    assert metrics["by_model_version"]["none"]["corrections"] == 24
    assert (
        metrics["by_model_version"]["v1"]["mean_iou"]
        > metrics["by_model_version"]["none"]["mean_iou"]
    )

    second = _train(client, project, storage_settings, config)
    detail = client.get(f"/projects/{project}/models/{second['model_version']}").json()
    assert detail["parent_version"] == "v1"
    assert detail["status"] in {"serving", "rejected"}
    assert detail["metrics"]["serving_held_out"]["images"] == len(detail["held_out"]) > 0
    assert len(detail["trained_on"]) + len(detail["held_out"]) == 28
