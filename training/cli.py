"""``prelabel train`` and ``prelabel worker``, added to the core CLI through an entry point."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from models.registry import serving_version
from prelabel.access_cli import cli_actor
from prelabel.blobs import sweep_temporary
from prelabel.jobs import RunKind, RunTrigger, claim_job, enqueue_training
from prelabel.projects import get_project
from prelabel.settings import get_storage_settings, get_worker_settings
from prelabel.workspace import open_workspace
from training.config import load_training_config
from training.worker import (
    apply_worker_limits,
    execute_run,
    launch_from_settings,
    run_worker,
    stop_on_signals,
    worker_name,
)

console = Console(stderr=True)


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
    workspace = open_workspace(storage)
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
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
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
    settings = get_worker_settings()
    apply_worker_limits(settings)
    storage = get_storage_settings()
    workspace = open_workspace(storage)
    sweep_temporary(workspace.blobs)
    stop = threading.Event()
    stop_on_signals(stop)
    try:
        run_worker(
            workspace,
            config or settings.training_config,
            settings,
            once=once,
            stop=stop,
            launch=launch_from_settings(settings, storage),
        )
    finally:
        workspace.engine.dispose()


def register(app: typer.Typer) -> None:
    """Add the training commands to the ``prelabel`` CLI."""
    app.command()(train)
    app.command()(worker)
