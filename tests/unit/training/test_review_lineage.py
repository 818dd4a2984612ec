"""With review required, a training run learns only from approved corrections, and its
lineage records the review state of each correction it used."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from prelabel.settings import StorageSettings, WorkerSettings
from prelabel.workspace import open_workspace
from tests.synthetic import png_bytes, shapes_sample
from tests.tiny import TINY_NETWORK
from training.worker import run_worker

pytestmark = pytest.mark.slow

TINY_TRAINING = {
    "data": {"held_out_share": 0.0, "crop_px": 64, "batch_size": 4},
    "model": TINY_NETWORK,
    "optim": {"epochs_full": 1, "epochs_incremental": 1, "min_steps_full": 2},
}


def test_pending_corrections_are_not_trained_on(
    client: TestClient, make_project, tmp_path: Path, storage_settings: StorageSettings
) -> None:
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(TINY_TRAINING))
    project = make_project("reviewed")
    samples = [shapes_sample(seed) for seed in range(6)]
    files = [
        ("files", (f"{i}.png", png_bytes(im), "image/png")) for i, (im, _) in enumerate(samples)
    ]
    ids = [
        i["id"] for i in client.post(f"/projects/{project}/images", files=files).json()["images"]
    ]
    answer = client.patch(f"/projects/{project}", json={"review_required": True})
    assert answer.status_code == 200, answer.text
    corrections = [
        client.put(
            f"/projects/{project}/images/{image}/correction",
            files={"mask": ("m.png", png_bytes(mask), "image/png")},
            data={"annotator": "ana"},
        ).json()
        for image, (_, mask) in zip(ids, samples, strict=True)
    ]
    assert {c["review_status"] for c in corrections} == {"pending"}
    approved = [c["id"] for c in corrections[:4]]
    for correction in approved:
        url = f"/projects/{project}/corrections/{correction}/review"
        assert client.post(url, json={"decision": "approve"}).status_code == 200
    rejected = corrections[4]["id"]
    url = f"/projects/{project}/corrections/{rejected}/review"
    assert client.post(url, json={"decision": "reject"}).status_code == 200

    run = client.post(f"/projects/{project}/training-runs", json={"kind": "full"})
    assert run.status_code == 202, run.text
    worker = WorkerSettings(poll_interval_s=0.1)
    workspace = open_workspace(storage_settings)
    try:
        assert run_worker(workspace, config, worker, once=True) >= 1
    finally:
        workspace.engine.dispose()
    finished = client.get(f"/projects/{project}/training-runs/{run.json()['id']}").json()
    assert finished["status"] == "succeeded", finished

    model = client.get(f"/projects/{project}/models/{finished['model_version']}").json()
    assert sorted(model["trained_on"]) == sorted(approved)
    assert model["review_states"] == dict.fromkeys(approved, "approved")
