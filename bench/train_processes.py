"""One training run in 1 process vs N processes (torchrun + DDP), same data, same config.

Usage::

    python -m bench.train_processes [--quick] [--nproc 2] [--device auto] [--out FILE]
    prelabel bench train-processes --quick

Imports the ``mni-tissue`` dataset (MNI152 slices, all masks as corrections) into two
fresh projects of a temporary workspace, then trains each from scratch through the
worker's ``execute_run``: one in this process, one in ``--nproc`` processes under torchrun.
Records per run: wall time (process start-up, data loading, export and evaluation
included), optimisation time, steps, images per second (all processes together), the
held-out mIoU of the candidate, the gate's decision and device/precision; and the ratios
N-process / 1-process. On a GPU machine ``--device auto`` trains on CUDA with mixed
precision, one GPU per process (``--nproc`` at most the GPUs; ``--nproc 1`` on one GPU).
``--quick``: 16 images, 20 steps (a CI smoke test).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.environment import stamp, write_result
from models.registry import get_version
from prelabel.datasets.catalog import prepare_dataset
from prelabel.datasets.folder import list_items
from prelabel.importer import import_dataset
from prelabel.jobs import RunKind, RunTrigger, claim_job, enqueue_training, get_training_run
from prelabel.projects import get_project
from prelabel.settings import StorageSettings
from prelabel.workspace import Workspace, open_workspace
from training.config import TrainingConfig
from training.torchrun import Launch
from training.worker import execute_run

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "out" / "train_processes.json"
MAX_PIXELS = 10_000_000


def tiny_config(*, quick: bool) -> TrainingConfig:
    """The tiny network of the tests; a fixed number of steps (no epoch term)."""
    return TrainingConfig.model_validate(
        {
            "data": {"held_out_share": 0.2, "crop_px": 96, "batch_size": 8},
            "model": {
                "arch": "Unet",
                "encoder": "resnet18",
                "encoder_depth": 3,
                "decoder_channels": [32, 16, 8],
                "in_channels": 1,
                "classes": 3,
                "mean": [0.5],
                "std": [0.25],
            },
            "optim": {"lr": 0.01, "epochs_full": 0, "min_steps_full": 20 if quick else 150},
        }
    )


def train_once(
    workspace: Workspace, project: str, config: TrainingConfig, launch: Launch
) -> dict[str, Any]:
    """One full run of ``project`` through the worker's path; what it took and made."""
    with workspace.sessions() as session, session.begin():
        queued = enqueue_training(  # or the run the imported corrections already queued
            session,
            get_project(session, project).id,
            trigger=RunTrigger.MANUAL,
            kind=RunKind.FULL,
            actor="bench",
        )
    run = claim_job(workspace.sessions, queued.id, "bench")
    started = time.perf_counter()
    status = execute_run(workspace, run, config, launch=launch)
    wall_s = time.perf_counter() - started
    with workspace.sessions() as session:
        finished = get_training_run(session, run.project_id, run.id)
        if finished.model_version is None:
            raise RuntimeError(f"run in {launch.nproc} processes ended {status}: {finished.error}")
        record = get_version(session, run.project_id, finished.model_version)
    metrics = record.metrics
    return {
        "processes": metrics["processes"],
        "device": metrics["device"],
        "train_precision": metrics["train_precision"],
        "wall_s": round(wall_s, 2),
        "train_s": round(metrics["train_s"], 2),
        "steps": metrics["steps"],
        "images_per_s": round(metrics["images_per_s"], 1),
        "held_out_miou": metrics["held_out"]["miou"],
        "decision": finished.decision,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Both runs in one temporary workspace; the result's ``runs`` and ``ratios``."""
    config = tiny_config(quick=args.quick)
    with tempfile.TemporaryDirectory(prefix="prelabel-bench-ddp-") as tmp:
        root = Path(tmp)
        data = prepare_dataset("mni-tissue", root / "data")
        stems = sorted(item.stem for item in list_items(data))
        keep = set(stems[:: max(1, len(stems) // 16)][:16] if args.quick else stems)
        storage = StorageSettings(home=root / "home")
        storage.home.mkdir()
        workspace = open_workspace(storage)
        try:
            runs = []
            for nproc in sorted({1, args.nproc}):
                project = f"ddp-{nproc}"
                import_dataset(
                    workspace,
                    data,
                    project=project,
                    max_pixels=MAX_PIXELS,
                    actor="bench",
                    include=keep.__contains__,
                )
                launch = Launch(nproc=nproc, device=args.device, storage=storage)
                runs.append(train_once(workspace, project, config, launch))
                logger.info("%d process(es): %s", nproc, runs[-1])
        finally:
            workspace.engine.dispose()
    one, many = runs[0], runs[-1]
    return {
        "images": len(keep),
        "config": config.model_dump(mode="json"),
        "runs": runs,
        "ratios": {
            "wall_s_n_over_1": round(many["wall_s"] / one["wall_s"], 3),
            "train_s_n_over_1": round(many["train_s"] / one["train_s"], 3),
            "images_per_s_n_over_1": round(many["images_per_s"] / one["images_per_s"], 3),
        }
        if len(runs) > 1
        else None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run both trainings, write the JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.train_processes", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="16 images, 20 steps: a smoke test")
    parser.add_argument(
        "--nproc", type=int, default=2, help="processes of the second run (1: only one run)"
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    result = {
        "benchmark": "train_processes",
        "quick": args.quick,
        "nproc": args.nproc,
        **stamp(),
        **run(args),
    }
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
