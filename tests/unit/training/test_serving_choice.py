"""A tiny training run counts the network's FLOPs and records its precision decision; the
service then serves the chosen artifact."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from prelabel.settings import StorageSettings, WorkerSettings
from prelabel.workspace import open_workspace
from tests.split_labelling import label_until_split
from tests.unit.training.test_review_lineage import TINY_TRAINING
from training.worker import run_worker

pytestmark = pytest.mark.slow


def test_a_training_run_records_flops_and_a_precision_decision(
    client: TestClient, make_project, tmp_path: Path, storage_settings: StorageSettings
) -> None:
    config = tmp_path / "train.yaml"
    tiny = {**TINY_TRAINING, "data": {**TINY_TRAINING["data"], "held_out_share": 0.5}}
    config.write_text(yaml.safe_dump(tiny | {"precision": {"calibration_images": 4}}))
    project = make_project("precision")
    split = label_until_split(client, project, 0.5, held_out=2, trained=4, annotator="ana")
    run = client.post(f"/projects/{project}/training-runs", json={"kind": "full"})
    assert run.status_code == 202, run.text
    workspace = open_workspace(storage_settings)
    try:
        assert run_worker(workspace, config, WorkerSettings(poll_interval_s=0.1), once=True) >= 1
    finally:
        workspace.engine.dispose()
    finished = client.get(f"/projects/{project}/training-runs/{run.json()['id']}").json()
    assert finished["status"] == "succeeded", finished

    models = client.get(f"/projects/{project}/models").json()
    metrics = models[0]["metrics"]
    assert metrics["cost"]["flops"] > 0 and metrics["cost"]["height"] == 512
    decision = metrics["precision"]
    assert [t["precision"] for t in decision["trials"]] == ["fp32", "int8", "fp16"]
    fp32 = decision["trials"][0]
    assert fp32["miou"] is not None and fp32["p50_ms"] > 0
    assert set(decision["verdicts"]) == {"int8", "fp16"}
    assert decision["chosen"] in {"fp32", "int8", "fp16"}
    if decision["chosen"] != "fp32":
        assert decision["onnx_key"].endswith(f".{decision['chosen']}.onnx")
        assert len(decision["onnx_sha256"]) == 64
    adopted = [p for p, why in decision["verdicts"].items() if why.startswith("adopted")]
    assert (decision["chosen"] == "fp32") == (not adopted)

    # the serving version drafts from its chosen artifact (sha256 checked on load)
    draft = client.get(f"/projects/{project}/images/{split.trained[0]}/draft")
    assert draft.status_code == 200, draft.text
    assert draft.headers["x-model-version"] == models[0]["version"]
