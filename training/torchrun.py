"""Run a claimed training job in N processes: ``torchrun`` launched by the worker.

The worker (``run_in_processes``) starts
``python -m torch.distributed.run --standalone --nproc-per-node N -m training.torchrun ...``
(what the ``torchrun`` script runs, with this interpreter); each process joins the process
group and trains its replica (``training.distributed``); rank 0 runs the same
``run_training`` as a single-process run, so the model version, its artifacts and the
promotion decision come from one code path whatever the number of processes.

Division of labour:

* the worker keeps the job's heartbeat, relays its progress (rank 0 writes it to the
  database; the worker reads it back for ``prelabel train``'s progress bar), and records
  success or failure from the result file rank 0 writes (``RunResult``);
* a stop (SIGTERM to the worker) creates a stop file; rank 0 sees it, or the worker's
  death, at its next progress report, every rank stops at that same report, and the worker
  puts the run back in the queue: the points and semantics of a single-process stop;
* the processes open the workspace from the worker's storage settings, passed as
  ``PRELABEL_*`` environment variables (secrets never appear on a command line).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

import training
from models.registry import get_version
from prelabel.errors import PrelabelError, TrainingError
from prelabel.jobs import Job, RunKind, update_progress
from prelabel.projects import get_project
from prelabel.settings import StorageSettings, get_storage_settings, settings_environment
from prelabel.tables import JobRow
from prelabel.workspace import Workspace, open_workspace
from training.config import TrainingConfig
from training.devices import DEVICE_REQUESTS, PRECISION_REQUESTS, DeviceRequest, PrecisionRequest
from training.distributed import (
    PeerStopped,
    ProgressCallback,
    Replica,
    StopRequested,
    join_process_group,
)
from training.train import TrainingOutcome, run_training, train_replica

logger = logging.getLogger(__name__)

POLL_S = 0.5
"""How often the launching worker looks at its processes, the stop request and progress."""
TERMINATE_GRACE_S = 30.0
"""How long torchrun gets to stop its processes before it is killed."""


@dataclass(frozen=True)
class Launch:
    """How the worker runs a training job: processes, device and precision.

    ``storage`` is what the processes of a distributed run open (None: they read the
    ``PRELABEL_*`` environment, as the worker did).
    """

    nproc: int = 1
    device: DeviceRequest = "auto"
    precision: PrecisionRequest = "auto"
    torch_threads: int = 0
    storage: StorageSettings | None = None


class RunResult(BaseModel):
    """What rank 0 tells the launching worker: a version, a failure, or a stop."""

    status: Literal["succeeded", "failed", "released"]
    """``released``: stopped at a progress report, for the worker to put back in the queue."""
    version: str | None = None
    promoted: bool = False
    decision: str = ""
    kind: RunKind = RunKind.FULL
    train_s: float = 0.0
    steps: int = 0
    candidate_miou: float | None = None
    serving_miou: float | None = None
    error: str | None = None


def stop_asked(stop_file: Path, worker_pid: int) -> bool:
    """Whether the worker asked for a stop, or is gone (an orphaned run must not register)."""
    if stop_file.exists():
        return True
    try:
        os.kill(worker_pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.torchrun")
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--project-id", required=True)
    parser.add_argument("--kind", type=RunKind, required=True)
    parser.add_argument("--config", type=Path, required=True, help="TrainingConfig JSON")
    parser.add_argument("--result", type=Path, required=True, help="rank 0's RunResult JSON")
    parser.add_argument("--stop-file", type=Path, required=True)
    parser.add_argument("--worker-pid", type=int, required=True)
    parser.add_argument("--device", choices=DEVICE_REQUESTS, default="auto")
    parser.add_argument("--precision", choices=PRECISION_REQUESTS, default="auto")
    parser.add_argument("--torch-threads", type=int, default=0)
    return parser.parse_args(argv)


def _rank_zero_progress(
    workspace: Workspace, run_id: str, stop_file: Path, worker_pid: int
) -> ProgressCallback:
    def record(progress: dict[str, Any]) -> None:
        if stop_asked(stop_file, worker_pid):
            raise StopRequested(run_id)
        with workspace.sessions() as session, session.begin():
            update_progress(session, run_id, progress)

    return record


def _train(args: argparse.Namespace, replica: Replica, workspace: Workspace) -> RunResult | None:
    """This rank's share of the run; rank 0's result (None on the other ranks)."""
    config = TrainingConfig.model_validate_json(args.config.read_text())
    with workspace.sessions() as session:
        project = get_project(session, args.project_id)
    if not replica.is_main:
        train_replica(
            workspace, project, config, kind=args.kind, replica=replica, on_progress=lambda _: None
        )
        return None
    on_progress = _rank_zero_progress(workspace, args.run_id, args.stop_file, args.worker_pid)
    outcome = run_training(
        workspace,
        project,
        config,
        run_id=args.run_id,
        kind=args.kind,
        on_progress=on_progress,
        replica=replica,
    )
    return RunResult(
        status="succeeded",
        version=outcome.model.version,
        promoted=outcome.promoted,
        decision=outcome.decision,
        kind=outcome.kind,
        train_s=outcome.train_s,
        steps=outcome.steps,
        candidate_miou=outcome.candidate_miou,
        serving_miou=outcome.serving_miou,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """One rank of a distributed training run (started by torchrun; see the module doc)."""
    import torch
    import torch.distributed as dist

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = _parse_args(argv)
    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    replica = join_process_group(args.device, args.precision)
    workspace = open_workspace(get_storage_settings())
    result: RunResult | None
    try:
        result = _train(args, replica, workspace)
    except (StopRequested, PeerStopped):
        logger.info("rank %d: run %s stopped at a progress report", replica.rank, args.run_id)
        result = RunResult(status="released")
    except PrelabelError as exc:
        result = RunResult(status="failed", error=str(exc))
    except Exception as exc:
        logger.exception("rank %d: training run %s crashed", replica.rank, args.run_id)
        result = RunResult(status="failed", error=f"{type(exc).__name__}: {exc}")
    finally:
        workspace.engine.dispose()
    if replica.is_main and result is not None:
        args.result.write_text(result.model_dump_json())
    dist.destroy_process_group()
    # A stop is no failure: torchrun need not print a failure report for it.
    return 1 if result is not None and result.status == "failed" else 0


# --- in the launching worker ---------------------------------------------------------------


def torchrun_command(nproc: int, args: Sequence[str]) -> list[str]:
    """``torchrun --standalone --nproc-per-node N -m training.torchrun ARGS`` for this
    interpreter (``python -m torch.distributed.run`` is what the ``torchrun`` script runs)."""
    if nproc < 1:
        raise ValueError(f"nproc must be at least 1, got {nproc}")
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "training.torchrun",
        *args,
    ]


def child_environment(storage: StorageSettings | None) -> dict[str, str]:
    """This process's environment, with ``storage`` (if given) as ``PRELABEL_*`` variables
    and this checkout first on ``PYTHONPATH`` (the children run exactly the launching code)."""
    env = dict(os.environ)
    for name, value in (settings_environment(storage) if storage else {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    root = str(Path(training.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _relay_progress(
    workspace: Workspace, run_id: str, last: dict[str, Any] | None, on_progress: ProgressCallback
) -> dict[str, Any] | None:
    with workspace.sessions() as session:
        row = session.get(JobRow, run_id)
        progress = dict(row.progress) if row is not None and row.progress else None
    if progress is not None and progress != last:
        on_progress(progress)
        return progress
    return last


def _wait(
    process: subprocess.Popen[bytes],
    workspace: Workspace,
    run_id: str,
    stop_file: Path,
    stop: threading.Event | None,
    on_progress: ProgressCallback,
) -> int:
    last: dict[str, Any] | None = None
    while True:
        try:
            code = process.wait(timeout=POLL_S)
        except subprocess.TimeoutExpired:
            code = None
        if stop is not None and stop.is_set() and not stop_file.exists():
            stop_file.touch()
            logger.info("asked the processes of run %s to stop", run_id)
        last = _relay_progress(workspace, run_id, last, on_progress)
        if code is not None:
            return code


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()  # torchrun stops its processes on SIGTERM
    try:
        process.wait(timeout=TERMINATE_GRACE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_in_processes(
    workspace: Workspace,
    run: Job,
    config: TrainingConfig,
    launch: Launch,
    *,
    on_progress: ProgressCallback = lambda _: None,
    stop: threading.Event | None = None,
) -> TrainingOutcome:
    """Run a claimed training run in ``launch.nproc`` processes under torchrun.

    Returns:
        The outcome registered by rank 0 (read back from the registry).

    Raises:
        StopRequested: the run stopped at a progress report after ``stop`` was set.
        TrainingError: the run failed (the processes' error), or they died without a result.
    """
    with tempfile.TemporaryDirectory(prefix=f"prelabel-ddp-{run.id}-") as tmp:
        folder = Path(tmp)
        (folder / "config.json").write_text(config.model_dump_json())
        result_path, stop_file = folder / "result.json", folder / "stop"
        args = [
            *("--run-id", run.id, "--project-id", run.project_id, "--kind", run.kind.value),
            *("--config", str(folder / "config.json"), "--result", str(result_path)),
            *("--stop-file", str(stop_file), "--worker-pid", str(os.getpid())),
            *("--device", launch.device, "--precision", launch.precision),
            *("--torch-threads", str(launch.torch_threads)),
        ]
        started = time.perf_counter()
        logger.info("run %s: starting %d training processes", run.id, launch.nproc)
        process = subprocess.Popen(
            torchrun_command(launch.nproc, args),
            env=child_environment(launch.storage),
            start_new_session=True,  # a terminal's Ctrl-C reaches the worker, not torchrun
        )
        try:
            code = _wait(process, workspace, run.id, stop_file, stop, on_progress)
        finally:
            _terminate(process)
        result = (
            RunResult.model_validate_json(result_path.read_text()) if result_path.exists() else None
        )
    logger.info(
        "run %s: processes exited with %d after %.1f s", run.id, code, time.perf_counter() - started
    )
    if result is None or result.status == "released":
        if stop is not None and stop.is_set():
            raise StopRequested(run.id)
        raise TrainingError(f"the {launch.nproc} training processes exited with code {code}")
    if result.status != "succeeded" or result.version is None:
        raise TrainingError(result.error or f"training processes failed with code {code}")
    with workspace.sessions() as session:
        model = get_version(session, run.project_id, result.version)
    return TrainingOutcome(
        model=model,
        promoted=result.promoted,
        decision=result.decision,
        kind=result.kind,
        train_s=result.train_s,
        steps=result.steps,
        candidate_miou=result.candidate_miou,
        serving_miou=result.serving_miou,
    )


if __name__ == "__main__":
    sys.exit(main())
