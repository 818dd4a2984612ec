"""The training worker: claims queued runs from the database and executes them one at a time.

While idle it recovers runs whose worker died (kill -9, lost host) and applies
every project's time-based training trigger. Several workers (hosts) can share
one database: claiming is atomic, and one project never trains twice at once.

A worker asked to stop (SIGTERM, SIGINT) takes no new job; a training run in
progress is released back to the queue at its next progress report (another
worker starts it again), a bulk drafts job before its next image (the next
attempt skips the images drafted already).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from models.bulk import BulkOptions, run_bulk_job
from models.predictor import OnnxPredictor
from models.registry import ModelRecord
from models.serving import load_predictor
from models.tiling import Tiling
from prelabel.bulk_drafts import BulkProgress
from prelabel.database import retry_on_busy, write_transaction
from prelabel.errors import PrelabelError
from prelabel.jobs import (
    Job,
    JobStatus,
    JobTask,
    claim_next_job,
    finish_job,
    heartbeat,
    recover_stale_jobs,
    release_job,
    update_progress,
)
from prelabel.projects import get_project
from prelabel.settings import StorageSettings, WorkerSettings, get_service_settings
from prelabel.triggers import enqueue_due_runs
from prelabel.workspace import Workspace
from training.config import TrainingConfig, load_training_config
from training.devices import detect_placement
from training.distributed import Replica, StopRequested
from training.torchrun import Launch, run_in_processes
from training.train import TrainingOutcome, run_training

__all__ = ["StopRequested", "execute_run", "run_worker"]

logger = logging.getLogger(__name__)


def stop_on_signals(stop: threading.Event) -> None:
    """Set ``stop`` on SIGTERM and SIGINT (call from the main thread of a worker process)."""

    def request_stop(signum: int, _frame: object) -> None:
        logger.info("worker %s: %s received, stopping", worker_name(), signal.strsignal(signum))
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)


def worker_name() -> str:
    """``host:pid``, recorded on the runs this process claims."""
    return f"{socket.gethostname()}:{os.getpid()}"


def worker_alive(name: str) -> bool | None:
    """Whether the worker ``host:pid`` is alive: known only for this host, else None."""
    host, _, pid = name.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, else every core)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _auto_threads(threads: int) -> int:
    # Leave one core to the service that shares the machine (README, "Load").
    return threads if threads > 0 else max(1, usable_cores() - 1)


def resolved_torch_threads(settings: WorkerSettings) -> int:
    """Training threads: ``torch_threads``, or 0 for every usable core but one (at least 1)."""
    return _auto_threads(settings.torch_threads)


def resolved_draft_threads(settings: WorkerSettings) -> int:
    """onnxruntime threads of bulk drafts: ``draft_threads``, or 0 for every usable core.

    Unlike training, a bulk job needs no core kept back: it waits between images while
    people's requests compute drafts (``models.bulk.yield_to_people``) and runs niced.
    """
    return _bulk_lanes(settings.draft_threads)


def _bulk_lanes(threads: int) -> int:
    return threads if threads > 0 else usable_cores()


def set_torch_threads(threads: int) -> None:
    """Limit torch's intra-op threads (0 keeps torch's default)."""
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


def _threads_of_this_process() -> list[int]:
    """Thread ids of this process (Linux), or ``[0]`` (the calling thread) elsewhere."""
    try:
        return [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        return [0]


def lower_priority(nice: int) -> int:
    """Raise the niceness of every thread of this process to ``nice`` (never lowers it:
    that needs privileges).

    On Linux niceness belongs to a thread, and threads inherit it only when they start:
    the threads that imports started before this call (OpenBLAS's, onnxruntime's) are
    raised one by one, or they would compete with the service at full priority.

    Returns:
        The niceness now in effect for the calling thread.
    """
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if nice < current:
        logger.info("worker keeps niceness %d (asked for %d: lowering needs root)", current, nice)
    for thread in _threads_of_this_process():
        try:
            if os.getpriority(os.PRIO_PROCESS, thread) < nice:
                os.setpriority(os.PRIO_PROCESS, thread, nice)
        except ProcessLookupError:  # the thread ended meanwhile
            continue
    return os.getpriority(os.PRIO_PROCESS, 0)


def apply_worker_limits(settings: WorkerSettings) -> tuple[int, int]:
    """Make this process a good neighbour of the service: lower CPU priority, bounded threads.

    Call at the start of a worker (or ``prelabel train``) process, before torch runs.

    Returns:
        The niceness and the number of torch threads now in effect.
    """
    nice = lower_priority(settings.nice)
    threads = resolved_torch_threads(settings)
    set_torch_threads(threads)
    logger.info(
        "worker %s: niceness %d, %d torch threads, %d onnxruntime threads for drafts",
        worker_name(),
        nice,
        threads,
        resolved_draft_threads(settings),
    )
    return nice, threads


@contextmanager
def heartbeats(workspace: Workspace, run_id: str, interval_s: float) -> Iterator[None]:
    """Refresh the run's heartbeat every ``interval_s`` from a background thread."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval_s):
            write_transaction(workspace.sessions, lambda session: heartbeat(session, run_id))

    thread = threading.Thread(target=beat, name=f"heartbeat-{run_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _record_failure(workspace: Workspace, run_id: str, error: str) -> JobStatus:
    write_transaction(
        workspace.sessions,
        lambda session: finish_job(session, run_id, status=JobStatus.FAILED, error=error),
    )
    return JobStatus.FAILED


def _record_success(workspace: Workspace, run_id: str, outcome: TrainingOutcome) -> JobStatus:
    write_transaction(workspace.sessions, lambda session: _finish_success(session, run_id, outcome))
    return JobStatus.SUCCEEDED


def _finish_success(session: Session, run_id: str, outcome: TrainingOutcome) -> None:
    update_progress(
        session,
        run_id,
        {
            "stage": "done",
            "kind": outcome.kind.value,
            "train_s": outcome.train_s,
            "steps": outcome.steps,
        },
    )
    finish_job(
        session,
        run_id,
        status=JobStatus.SUCCEEDED,
        model_version=outcome.model.version,
        decision=outcome.decision,
        candidate_miou=outcome.candidate_miou,
        serving_miou=outcome.serving_miou,
        train_s=outcome.train_s,
    )


def execute_run(
    workspace: Workspace,
    run: Job,
    config: TrainingConfig,
    *,
    heartbeat_interval_s: float = 10.0,
    on_progress: Callable[[dict[str, Any]], None] = lambda _: None,
    stop: threading.Event | None = None,
    launch: Launch | None = None,
) -> JobStatus:
    """Run one claimed training run to completion and record its outcome.

    ``launch`` places it: in this process on the automatic device by default, in
    ``launch.nproc`` processes under torchrun when above 1 (``training.torchrun``).
    When ``stop`` is set, the run is released back to the queue at its next progress
    report and QUEUED is returned.
    """
    launch = launch or Launch()

    def record_progress(progress: dict[str, Any]) -> None:
        if stop is not None and stop.is_set():
            raise StopRequested(run.id)
        write_transaction(
            workspace.sessions, lambda session: update_progress(session, run.id, progress)
        )
        on_progress(progress)

    try:
        with workspace.sessions() as session:
            project = get_project(session, run.project_id)
        with heartbeats(workspace, run.id, heartbeat_interval_s):
            if launch.nproc > 1:
                outcome = run_in_processes(
                    workspace, run, config, launch, on_progress=on_progress, stop=stop
                )
            else:
                outcome = run_training(
                    workspace,
                    project,
                    config,
                    run_id=run.id,
                    kind=run.kind,
                    on_progress=record_progress,
                    replica=Replica(placement=detect_placement(launch.device, launch.precision)),
                )
    except StopRequested:
        with workspace.sessions() as session, session.begin():
            release_job(session, run.id, run.worker or "")
        return JobStatus.QUEUED
    except PrelabelError as exc:
        logger.warning("training run %s failed: %s", run.id, exc)
        return _record_failure(workspace, run.id, str(exc))
    except Exception as exc:
        # The worker must outlive a broken run: record it, keep the traceback in the log.
        logger.exception("training run %s crashed", run.id)
        return _record_failure(workspace, run.id, f"{type(exc).__name__}: {exc}")
    return _record_success(workspace, run.id, outcome)


def execute_drafts_job(
    workspace: Workspace,
    run: Job,
    *,
    threads: int = 0,
    yield_max_s: float = 10.0,
    heartbeat_interval_s: float = 10.0,
    stop: threading.Event | None = None,
    on_progress: Callable[[BulkProgress], None] = lambda _: None,
) -> JobStatus:
    """Run one claimed bulk drafts job (``models.bulk``) with the service's tiling, so that
    a draft is the same whichever process makes it.

    ``threads`` images are drafted at once (lanes), each on one onnxruntime thread;
    0: one lane per usable core.
    """
    service = get_service_settings()
    tiling = Tiling(service.tile_px, service.tile_overlap_px)

    def load(record: ModelRecord) -> OnnxPredictor:
        # One onnxruntime thread per lane: lanes overlap one image's network run with
        # another's decoding, encoding and storing (README, "Bulk pre-labeling").
        return load_predictor(workspace.blobs, record, threads=1, tiling=tiling)

    options = BulkOptions(
        lease_s=service.draft_lease_s,
        yield_max_s=yield_max_s,
        lanes=_bulk_lanes(threads),
    )
    try:
        with heartbeats(workspace, run.id, heartbeat_interval_s):
            return run_bulk_job(
                workspace, run, load, options=options, stop=stop, on_progress=on_progress
            )
    except PrelabelError as exc:
        logger.warning("bulk drafts job %s failed: %s", run.id, exc)
        return _record_failure(workspace, run.id, str(exc))
    except Exception as exc:
        # The worker must outlive a broken job: record it, keep the traceback in the log.
        logger.exception("bulk drafts job %s crashed", run.id)
        return _record_failure(workspace, run.id, f"{type(exc).__name__}: {exc}")


def housekeeping(workspace: Workspace, settings: WorkerSettings) -> None:
    """Recover runs of dead workers and queue runs that are due by time."""

    def work(session: Session) -> None:
        recover_stale_jobs(session, stale_after_s=settings.stale_after_s, worker_alive=worker_alive)
        enqueue_due_runs(session)

    write_transaction(workspace.sessions, work)


def launch_from_settings(
    settings: WorkerSettings, storage: StorageSettings | None = None
) -> Launch:
    """How this worker runs training jobs: ``PRELABEL_TRAIN_NPROC``, ``_DEVICE``, ``_PRECISION``.

    The worker's training threads are shared among the processes; the children inherit
    the worker's niceness.
    """
    return Launch(
        nproc=settings.train_nproc,
        device=settings.train_device,
        precision=settings.train_precision,
        torch_threads=max(1, resolved_torch_threads(settings) // settings.train_nproc),
        storage=storage,
    )


def run_worker(
    workspace: Workspace,
    config_path: Path,
    settings: WorkerSettings,
    *,
    once: bool = False,
    stop: threading.Event | None = None,
    launch: Launch | None = None,
) -> int:
    """Claim and execute runs until ``stop`` is set (or until the queue is empty with ``once``).

    ``launch`` places each training run (default: from ``settings``, the processes of a
    distributed run reading their storage settings from the environment as this one did).

    Returns:
        The number of runs executed (released ones included).
    """
    name = worker_name()
    stop = stop or threading.Event()
    launch = launch or launch_from_settings(settings)
    logger.info("worker %s polling every %.1f s", name, settings.poll_interval_s)
    executed = 0
    while not stop.is_set():
        housekeeping(workspace, settings)
        run = retry_on_busy(lambda: claim_next_job(workspace.sessions, name))
        if run is None:
            if once:
                return executed
            stop.wait(settings.poll_interval_s)
            continue
        logger.info("worker %s starts %s job %s (%s)", name, run.task, run.id, run.trigger)
        if run.task is JobTask.DRAFTS:
            execute_drafts_job(
                workspace,
                run,
                threads=resolved_draft_threads(settings),
                yield_max_s=settings.bulk_yield_max_s,
                heartbeat_interval_s=settings.heartbeat_interval_s,
                stop=stop,
            )
        else:
            execute_run(
                workspace,
                run,
                load_training_config(config_path),
                heartbeat_interval_s=settings.heartbeat_interval_s,
                stop=stop,
                launch=launch,
            )
        executed += 1
    logger.info("worker %s stopped", name)
    return executed
