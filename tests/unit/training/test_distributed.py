"""Training in several processes (torchrun + DDP on gloo): same artifacts, same gate."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from models.builder import load_checkpoint
from models.predictor import OnnxPredictor
from models.registry import ModelRecord, get_version
from prelabel.jobs import JobStatus, RunKind, RunTrigger, claim_job, enqueue_training
from prelabel.policy import decide_promotion, pair_scores
from prelabel.settings import StorageSettings, settings_environment
from prelabel.tables import JobRow
from prelabel.workspace import Workspace
from tests.synthetic import png_bytes, shapes_sample
from tests.tiny import TINY_NETWORK
from training.config import DataConfig, TrainingConfig
from training.distributed import Replica, make_loader
from training.torchrun import Launch, child_environment, torchrun_command
from training.worker import execute_run

DDP_TRAINING = TrainingConfig.model_validate(
    {
        "data": {"held_out_share": 0.25, "crop_px": 64, "batch_size": 4},
        "model": TINY_NETWORK,
        "optim": {
            "lr": 0.01,
            "epochs_full": 1,
            "epochs_incremental": 1,
            "min_steps_full": 20,
            "min_steps_incremental": 10,
        },
    }
)


def _corrected_project(client: TestClient, make_project: Callable[[str], str], name: str) -> str:
    project = make_project(name)
    samples = [shapes_sample(seed) for seed in range(12)]
    files = [
        ("files", (f"{i}.png", png_bytes(im), "image/png")) for i, (im, _) in enumerate(samples)
    ]
    uploaded = client.post(f"/projects/{project}/images", files=files).json()["images"]
    for image, (_, mask) in zip(uploaded, samples, strict=True):
        put = client.put(
            f"/projects/{project}/images/{image['id']}/correction",
            files={"mask": ("m.png", png_bytes(mask), "image/png")},
            data={"annotator": "ana"},
        )
        assert put.status_code == 200, put.text
    return project


def _train(workspace: Workspace, project: str, kind: RunKind, launch: Launch) -> JobRow:
    with workspace.sessions() as session, session.begin():
        queued = enqueue_training(
            session, project, trigger=RunTrigger.MANUAL, kind=kind, actor="test"
        )
    run = claim_job(workspace.sessions, queued.id, "test-worker")
    seen: list[dict[str, object]] = []
    status = execute_run(workspace, run, DDP_TRAINING, launch=launch, on_progress=seen.append)
    with workspace.sessions() as session:
        row = session.get(JobRow, run.id)
        assert row is not None
        session.expunge(row)
    assert status is JobStatus.SUCCEEDED, row.error
    if launch.nproc > 1:  # rank 0's progress, relayed through the database (the last for sure)
        assert seen and seen[-1]["stage"] == "precision", seen  # the step after evaluating
    return row


def _version(workspace: Workspace, row: JobRow) -> ModelRecord:
    assert row.model_version is not None
    with workspace.sessions() as session:
        return get_version(session, row.project_id, row.model_version)


def _check_artifacts(workspace: Workspace, record: ModelRecord, tmp_path: Path) -> None:
    onnx, checkpoint = (
        workspace.blobs.get(record.onnx_key),
        workspace.blobs.get(record.checkpoint_key),
    )
    assert hashlib.sha256(onnx).hexdigest() == record.onnx_sha256
    assert hashlib.sha256(checkpoint).hexdigest() == record.checkpoint_sha256
    prediction = OnnxPredictor.from_bytes(onnx).predict(shapes_sample(99)[0])
    assert prediction.mask.shape == (64, 64)
    (tmp_path / "model.pt").write_bytes(checkpoint)
    _, net_config = load_checkpoint(tmp_path / "model.pt")
    assert net_config.classes == 3


@pytest.mark.slow
def test_two_processes_register_the_same_kind_of_version_through_the_same_gate(
    client: TestClient,
    make_project: Callable[[str], str],
    workspace: Workspace,
    storage_settings: StorageSettings,
    tmp_path: Path,
) -> None:
    single_project = _corrected_project(client, make_project, "single")
    ddp_project = _corrected_project(client, make_project, "ddp")
    one = Launch(nproc=1, device="cpu")
    two = Launch(nproc=2, device="cpu", storage=storage_settings)

    single = _version(workspace, _train(workspace, single_project, RunKind.FULL, one))
    ddp_row = _train(workspace, ddp_project, RunKind.FULL, two)
    ddp = _version(workspace, ddp_row)

    assert (single.metrics["processes"], ddp.metrics["processes"]) == (1, 2)
    assert ddp.metrics["device"] == "cpu" and ddp.metrics["train_precision"] == "fp32"
    assert set(ddp.metrics) == set(single.metrics)
    assert set(ddp.config) == set(single.config)
    assert (ddp.status, ddp.reason) == (single.status, single.reason)  # first version: served
    assert ddp_row.decision == single.reason and ddp_row.model_version == ddp.version
    assert len(ddp.trained_on) + len(ddp.held_out) == 12
    for record in (single, ddp):
        _check_artifacts(workspace, record, tmp_path)

    # Fine-tuning in two processes goes through the paired gate against the serving version.
    tuned_row = _train(workspace, ddp_project, RunKind.INCREMENTAL, two)
    tuned = _version(workspace, tuned_row)
    assert tuned.parent_version == ddp.version and tuned.metrics["kind"] == "incremental"
    margin = client.get(f"/projects/{ddp_project}").json()["training_policy"]["margin"]
    candidate, serving = tuned.metrics["held_out"], tuned.metrics["serving_held_out"]
    expected = decide_promotion(
        evidence=pair_scores(candidate["per_image"], serving["per_image"], margin=margin),
        has_serving_version=True,
        margin=margin,
        serving_pinned=False,
        min_images=DDP_TRAINING.promotion.min_held_out_images,
    )
    assert tuned_row.decision == expected.reason
    assert tuned.status == ("serving" if expected.promote else "rejected")


@pytest.mark.slow
def test_a_stop_releases_a_run_in_two_processes(
    client: TestClient,
    make_project: Callable[[str], str],
    workspace: Workspace,
    storage_settings: StorageSettings,
) -> None:
    project = _corrected_project(client, make_project, "stopping")
    with workspace.sessions() as session, session.begin():
        queued = enqueue_training(
            session, project, trigger=RunTrigger.MANUAL, kind=RunKind.FULL, actor="test"
        )
    run = claim_job(workspace.sessions, queued.id, "stopping-worker")
    stop = threading.Event()
    stop.set()  # SIGTERM arrived: every rank stops at rank 0's first progress report

    launch = Launch(nproc=2, device="cpu", storage=storage_settings)
    status = execute_run(workspace, run, DDP_TRAINING, launch=launch, stop=stop)

    assert status is JobStatus.QUEUED
    with workspace.sessions() as session:
        row = session.get(JobRow, run.id)
        assert row is not None and (row.status, row.worker) == ("queued", None)
    assert client.get(f"/projects/{project}/models").json() == []


def test_each_replica_reads_its_own_share_of_the_images() -> None:
    import torch

    dataset = torch.utils.data.TensorDataset(torch.arange(10))
    data = DataConfig(batch_size=2)
    shares = []
    for rank in (0, 1):
        loader = make_loader(dataset, data, Replica(rank=rank, world_size=2), seed=0)
        shares.append([int(x) for (batch,) in loader for x in batch])
    assert len(shares[0]) == len(shares[1]) == 4  # 5 each, drop_last: 2 batches of 2
    assert not set(shares[0]) & set(shares[1])
    single = make_loader(dataset, data, Replica(), seed=0)
    assert sorted(int(x) for (batch,) in single for x in batch) == list(range(10))


def test_the_processes_get_the_workers_storage_settings_and_code(tmp_path: Path) -> None:
    storage = StorageSettings(
        home=tmp_path, database_url="postgresql+psycopg://u:p@db/x", s3_secret_access_key="k"
    )
    env = child_environment(storage)
    assert env["PRELABEL_HOME"] == str(tmp_path)
    assert env["PRELABEL_S3_SECRET_ACCESS_KEY"] == "k"
    assert "PRELABEL_BLOB_URL" not in env  # unset here: not inherited either
    assert env["PYTHONPATH"].split(":")[0] == str(Path(__file__).resolve().parents[3])
    parsed = {k: v for k, v in env.items() if k.startswith("PRELABEL_")}
    assert settings_environment(
        StorageSettings(**{k[9:].lower(): v for k, v in parsed.items()})
    ) == (settings_environment(storage))


def test_the_launch_command_is_torchrun_standalone() -> None:
    command = torchrun_command(3, ["--run-id", "r"])
    assert command[1:6] == [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=3",
        "-m",
    ]
    assert command[6:] == ["training.torchrun", "--run-id", "r"]
    with pytest.raises(ValueError, match="at least 1"):
        torchrun_command(0, [])
