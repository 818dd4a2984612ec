"""``prelabel serve``, added to the core CLI through an entry point."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer
import uvicorn
from fastapi import FastAPI

from prelabel.cli import log_plainly
from prelabel.secret_box import load_secret_box
from prelabel.settings import (
    ServiceSettings,
    StorageSettings,
    get_security_settings,
    get_service_settings,
    get_storage_settings,
)
from prelabel.workspace import open_workspace
from service.app import bootstrap_access, create_app
from service.http_protocol import EVENT_LOOP, HTTP_PROTOCOL

logger = logging.getLogger(__name__)

PROMETHEUS_FOLDER = "prometheus-multiproc"
"""Folder under ``PRELABEL_HOME`` for the processes' metric files when
``PROMETHEUS_MULTIPROC_DIR`` is not set."""


def serve(
    host: Annotated[str | None, typer.Option(help="default: PRELABEL_HOST")] = None,
    port: Annotated[int | None, typer.Option(help="default: PRELABEL_PORT")] = None,
    processes: Annotated[
        int | None, typer.Option(min=1, max=64, help="default: PRELABEL_PROCESSES")
    ] = None,
) -> None:
    """Serve the HTTP API (drafts, corrections, metrics, training runs)."""
    log_plainly()
    settings = get_service_settings()
    storage = get_storage_settings()
    count = processes or settings.processes
    if count > 1:
        prepare_processes(storage, settings)
        logger.info("serving with %d processes", count)
    uvicorn.run(
        # Several processes each build their app (a factory named by import path).
        create_app(storage, settings, get_security_settings())
        if count == 1
        else "service.cli:app_of_a_process",
        factory=count > 1,
        workers=count,
        host=host or settings.host,
        port=port or settings.port,
        log_config=None,
        timeout_keep_alive=settings.keep_alive_s,
        http=HTTP_PROTOCOL,
        loop=EVENT_LOOP,
    )


def prepare_processes(storage: StorageSettings, settings: ServiceSettings) -> None:
    """What must happen once before several processes start: migrate the database,
    create the first admin and the secret key, and give Prometheus a folder without
    earlier processes' metric files (``PROMETHEUS_MULTIPROC_DIR``, else one under the
    home), set in the environment that the processes inherit."""
    security = get_security_settings()
    workspace = open_workspace(storage)
    try:
        load_secret_box(security, storage.home)
        bootstrap_access(workspace, storage, security)
    finally:
        workspace.engine.dispose()
    folder = settings.prometheus_multiproc_dir or storage.home / PROMETHEUS_FOLDER
    remove_metric_files(folder)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)


def remove_metric_files(folder: Path) -> None:
    """Create ``folder``, or remove the metric files earlier processes left in it
    (prometheus-client's ``*.db``; nothing else in the folder is touched)."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink()


def app_of_a_process() -> FastAPI:
    """The app of one of several service processes (uvicorn's factory, run in each)."""
    logging.basicConfig(level=logging.INFO)
    log_plainly()
    return create_app(get_storage_settings(), get_service_settings(), get_security_settings())


def register(app: typer.Typer) -> None:
    """Add ``serve`` to the ``prelabel`` CLI."""
    app.command()(serve)
