"""``prelabel train``, ``prelabel worker`` and ``prelabel prelabel-all``, added to the core CLI
through an entry point."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from models.registry import serving_version
from prelabel.access_cli import cli_actor
from prelabel.blobs import sweep_temporary
from prelabel.bulk_drafts import BulkJob, BulkProgress, get_bulk_job, start_bulk_drafts
from prelabel.cli import log_plainly
from prelabel.database import transaction
from prelabel.errors import ConflictError
from prelabel.jobs import JobStatus, RunKind, RunTrigger, claim_job, enqueue_training
from prelabel.projects import get_project
from prelabel.settings import get_storage_settings, get_worker_settings
from prelabel.workspace import Workspace, workspace_from_settings
from training.config import load_training_config
from training.worker import (
    apply_worker_limits,
    execute_drafts_job,
    execute_run,
    launch_from_settings,
    run_worker,
    stop_on_signals,
    worker_name,
)

console = Console(stderr=True)


def _progress_bar() -> Progress:
    """The bar of a long command (training, pre-labeling): description, bar, details, time."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
    )


def train(
    project: Annotated[str, typer.Option(help="project id or name")],
    config: Annotated[Path | None, typer.Option(help="training YAML")] = None,
    full: Annotated[bool, typer.Option(help="train from scratch instead of fine-tuning")] = False,
    if_no_model: Annotated[
        bool, typer.Option(help="do nothing if the project already has a serving model")
    ] = False,
    nproc: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="training processes (torchrun + DistributedDataParallel; one per GPU); "
            "default PRELABEL_TRAIN_NPROC or 1",
        ),
    ] = None,
) -> None:
    """Fine-tune the project's model on its corrections now, in this process (or in
    --nproc processes under torchrun)."""
    settings = get_worker_settings()
    if nproc is not None:
        settings = settings.model_copy(update={"train_nproc": nproc})
    apply_worker_limits(settings)
    storage = get_storage_settings()
    with workspace_from_settings() as workspace:
        training_config = load_training_config(config or settings.training_config)
        with workspace.sessions() as session, session.begin():
            found = get_project(session, project)
            if if_no_model and serving_version(session, found.id) is not None:
                console.print(f"project {found.name} already has a serving model")
                return
            queued = enqueue_training(
                session,
                found.id,
                trigger=RunTrigger.MANUAL,
                kind=RunKind.FULL if full else RunKind.INCREMENTAL,
                actor=cli_actor(),
            )
        run = claim_job(workspace.sessions, queued.id, worker_name())
        with _progress_bar() as progress:
            task = progress.add_task(f"training {found.name}", total=None, info="")

            def on_progress(update: dict[str, Any]) -> None:
                if update.get("stage") == "training":
                    progress.update(
                        task,
                        total=update["steps"],
                        completed=update["step"],
                        info=f"step {update['step']}/{update['steps']} loss {update['loss']:.3f}",
                    )
                else:
                    progress.update(task, info=str(update.get("stage", "")))

            status = execute_run(
                workspace,
                run,
                training_config,
                heartbeat_interval_s=settings.heartbeat_interval_s,
                on_progress=on_progress,
                launch=launch_from_settings(settings, storage),
            )
        with workspace.sessions() as session:
            serving = serving_version(session, found.id)
        console.print(
            f"training run {run.id}: {status}; serving version: "
            f"{serving.version if serving else 'none'}"
        )
        if status != "succeeded":
            raise typer.Exit(1)


def worker(
    once: Annotated[bool, typer.Option(help="exit when the queue is empty")] = False,
    config: Annotated[Path | None, typer.Option(help="training YAML")] = None,
) -> None:
    """Run queued training jobs from the database until stopped (SIGTERM/SIGINT: a training
    run in progress goes back to the queue, a drafts job is finished first)."""
    log_plainly()
    settings = get_worker_settings()
    apply_worker_limits(settings)
    storage = get_storage_settings()
    with workspace_from_settings() as workspace:
        sweep_temporary(workspace.blobs)
        stop = threading.Event()
        stop_on_signals(stop)
        run_worker(
            workspace,
            config or settings.training_config,
            settings,
            once=once,
            stop=stop,
            launch=launch_from_settings(settings, storage),
        )


_FINISHED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


def _describe(progress: BulkProgress) -> str:
    rate = f"{progress.rate_images_per_s:.1f} img/s" if progress.rate_images_per_s else "- img/s"
    eta = f"ETA {progress.eta_s:.0f} s" if progress.eta_s is not None else "ETA -"
    return f"{progress.done}/{progress.total} {rate} {eta} failed {progress.failed}"


def _follow(
    workspace: Workspace, project_id: str, job: BulkJob, show: Callable[[BulkProgress], None]
) -> BulkJob:
    """Poll the job (a worker runs it) until it ends."""
    while job.status not in _FINISHED:
        time.sleep(0.5)
        with workspace.sessions() as session:
            job = get_bulk_job(session, project_id, job.id)
        show(job.progress)
    return job


def _run_here(
    workspace: Workspace, job: BulkJob, show: Callable[[BulkProgress], None]
) -> BulkJob | None:
    """Claim and run the job in this process; None when a worker took it first."""
    try:
        claimed = claim_job(workspace.sessions, job.id, worker_name())
    except ConflictError:
        return None
    settings = get_worker_settings()
    stop = threading.Event()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    stop_on_signals(stop)  # Ctrl-C: the job goes back to the queue before its next image
    try:
        execute_drafts_job(
            workspace,
            claimed,
            yield_max_s=settings.bulk_yield_max_s,
            heartbeat_interval_s=settings.heartbeat_interval_s,
            stop=stop,
            on_progress=show,
        )
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    with workspace.sessions() as session:
        return get_bulk_job(session, claimed.project_id, job.id)


def prelabel_all(
    project: Annotated[str, typer.Option(help="project id or name")],
    image: Annotated[
        list[str] | None, typer.Option(help="draft only this image id (repeat the option)")
    ] = None,
    wait: Annotated[bool, typer.Option(help="follow the job to its end")] = True,
    here: Annotated[
        bool, typer.Option(help="run the job in this process unless a worker took it first")
    ] = True,
) -> None:
    """Pre-label every image without a correction (or the --image ones) with the serving
    model: a bulk drafts job, shown with a progress bar (GET /projects/P/bulk-drafts/JOB)."""
    with workspace_from_settings() as workspace:
        _report(_prelabel_all(workspace, project, image or None, wait=wait, here=here))


def _prelabel_all(
    workspace: Workspace, project: str, image_ids: list[str] | None, *, wait: bool, here: bool
) -> BulkJob | None:
    """Start the bulk drafts job; follow it (running it here if ``here``) when ``wait``."""
    with transaction(workspace.sessions) as session:
        found = get_project(session, project)
        job = start_bulk_drafts(session, found.id, image_ids=image_ids, actor=cli_actor())
    console.print(f"bulk drafts job {job.id} of project {found.name}: {job.status}")
    if not wait:
        return None
    with _progress_bar() as bar:
        task = bar.add_task(f"pre-labeling {found.name}", total=None, info="")

        def show(progress: BulkProgress) -> None:
            bar.update(
                task, total=progress.total, completed=progress.done, info=_describe(progress)
            )

        ran = _run_here(workspace, job, show) if here else None
        final = ran if ran is not None else _follow(workspace, found.id, job, show)
        show(final.progress)
    return final


def _report(job: BulkJob | None) -> None:
    if job is None:
        return
    progress = job.progress
    console.print(
        f"bulk drafts job {job.id}: {job.status} ({job.decision or job.error or ''}); "
        f"{progress.made} made, {progress.skipped} already there, {progress.failed} failed"
        + (f", {progress.rate_images_per_s:.2f} images/s" if progress.rate_images_per_s else "")
    )
    for failure in progress.failures[:20]:
        console.print(f"  failed: {failure.filename} ({failure.image_id}): {failure.reason}")
    if job.status is JobStatus.QUEUED:
        console.print("stopped: the job is back in the queue; a worker resumes it")
    if job.status is not JobStatus.SUCCEEDED:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the training and bulk pre-labeling commands to the ``prelabel`` CLI."""
    app.command()(train)
    app.command()(worker)
    app.command("prelabel-all")(prelabel_all)
