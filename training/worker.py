"""The training worker: claims queued runs from the database and executes them one at a time."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prelabel.errors import PrelabelError
from prelabel.jobs import RunStatus, TrainingRun, claim_next_run, finish_run, update_progress
from prelabel.projects import get_project
from prelabel.workspace import Workspace
from training.config import TrainingConfig, load_training_config
from training.train import run_training

logger = logging.getLogger(__name__)


def worker_name() -> str:
    """``host:pid``, recorded on the runs this process claims."""
    return f"{socket.gethostname()}:{os.getpid()}"


def set_torch_threads(threads: int) -> None:
    """Limit torch's intra-op threads (0 keeps torch's default)."""
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


def execute_run(
    workspace: Workspace,
    run: TrainingRun,
    config: TrainingConfig,
    *,
    on_progress: Callable[[dict[str, Any]], None] = lambda _: None,
) -> RunStatus:
    """Run one claimed training run to completion and record its outcome."""

    def record_progress(progress: dict[str, Any]) -> None:
        with workspace.sessions() as session, session.begin():
            update_progress(session, run.id, progress)
        on_progress(progress)

    try:
        with workspace.sessions() as session:
            project = get_project(session, run.project_id)
        outcome = run_training(
            workspace, project, config, run_id=run.id, kind=run.kind, on_progress=record_progress
        )
    except PrelabelError as exc:
        logger.warning("training run %s failed: %s", run.id, exc)
        with workspace.sessions() as session, session.begin():
            finish_run(session, run.id, status=RunStatus.FAILED, error=str(exc))
        return RunStatus.FAILED
    except Exception as exc:
        # The worker must outlive a broken run: record it, keep the traceback in the log.
        logger.exception("training run %s crashed", run.id)
        with workspace.sessions() as session, session.begin():
            finish_run(
                session, run.id, status=RunStatus.FAILED, error=f"{type(exc).__name__}: {exc}"
            )
        return RunStatus.FAILED
    with workspace.sessions() as session, session.begin():
        update_progress(
            session,
            run.id,
            {"stage": "done", "kind": outcome.kind.value, "train_s": outcome.train_s},
        )
        finish_run(
            session,
            run.id,
            status=RunStatus.SUCCEEDED,
            model_version=outcome.model.version,
            decision=outcome.decision,
        )
    return RunStatus.SUCCEEDED


def run_worker(
    workspace: Workspace, config_path: Path, *, poll_interval_s: float, once: bool = False
) -> int:
    """Claim and execute runs until stopped (or until the queue is empty with ``once``).

    Returns:
        The number of runs executed.
    """
    name = worker_name()
    logger.info("worker %s polling every %.1f s", name, poll_interval_s)
    executed = 0
    while True:
        run = claim_next_run(workspace.sessions, name)
        if run is None:
            if once:
                return executed
            time.sleep(poll_interval_s)
            continue
        config = load_training_config(config_path)
        execute_run(workspace, run, config)
        executed += 1
