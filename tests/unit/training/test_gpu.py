"""On a CUDA machine: training on the GPU in mixed precision, drafting with onnxruntime's CUDA
provider. Marked ``gpu``: they fail without a CUDA device (``make gpu-check`` runs them)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from models.predictor import CUDA_PROVIDER, OnnxPredictor
from models.registry import get_version
from prelabel.jobs import JobStatus, RunKind, RunTrigger, claim_job, enqueue_training
from prelabel.settings import StorageSettings
from prelabel.tables import JobRow
from prelabel.workspace import Workspace
from tests.synthetic import shapes_sample
from tests.unit.training.test_distributed import DDP_TRAINING, _corrected_project
from training.torchrun import Launch
from training.worker import execute_run

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("nproc", [1, 2])
def test_training_runs_on_cuda_in_mixed_precision_and_drafts_with_the_cuda_provider(
    nproc: int,
    client: TestClient,
    make_project: Callable[[str], str],
    workspace: Workspace,
    storage_settings: StorageSettings,
) -> None:
    import torch

    if nproc > torch.cuda.device_count():
        pytest.skip(f"{nproc} processes need {nproc} GPUs")
    project = _corrected_project(client, make_project, f"gpu-{nproc}")
    with workspace.sessions() as session, session.begin():
        queued = enqueue_training(
            session, project, trigger=RunTrigger.MANUAL, kind=RunKind.FULL, actor="test"
        )
    run = claim_job(workspace.sessions, queued.id, "gpu-worker")
    launch = Launch(nproc=nproc, storage=storage_settings)  # device and precision: auto

    status = execute_run(workspace, run, DDP_TRAINING, launch=launch)

    with workspace.sessions() as session:
        row = session.get(JobRow, run.id)
        assert row is not None and status is JobStatus.SUCCEEDED, row and row.error
        record = get_version(session, project, str(row.model_version))
    assert record.metrics["device"].startswith("cuda")
    assert record.metrics["train_precision"] in ("bf16", "fp16")
    assert record.metrics["processes"] == nproc
    assert record.metrics["final_loss"] == record.metrics["final_loss"]  # not NaN
    predictor = OnnxPredictor.from_bytes(workspace.blobs.get(record.onnx_key))
    assert predictor.providers[0] == CUDA_PROVIDER
    image, mask = shapes_sample(123)
    drafted = predictor.predict(image)
    assert drafted.mask.shape == mask.shape
    cpu = OnnxPredictor.from_bytes(workspace.blobs.get(record.onnx_key), device="cpu")
    assert (cpu.predict(image).mask == drafted.mask).mean() > 0.99  # same network, two providers
