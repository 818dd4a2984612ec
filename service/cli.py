"""``prelabel serve``, added to the core CLI through an entry point."""

from __future__ import annotations

from typing import Annotated

import typer
import uvicorn

from prelabel.cli import log_plainly
from prelabel.settings import (
    get_security_settings,
    get_service_settings,
    get_storage_settings,
)
from service.app import create_app


def serve(
    host: Annotated[str | None, typer.Option(help="default: PRELABEL_HOST")] = None,
    port: Annotated[int | None, typer.Option(help="default: PRELABEL_PORT")] = None,
) -> None:
    """Serve the HTTP API (drafts, corrections, metrics, training runs)."""
    log_plainly()
    settings = get_service_settings()
    app = create_app(get_storage_settings(), settings, get_security_settings())
    uvicorn.run(
        app,
        host=host or settings.host,
        port=port or settings.port,
        log_config=None,
        timeout_keep_alive=settings.keep_alive_s,
    )


def register(app: typer.Typer) -> None:
    """Add ``serve`` to the ``prelabel`` CLI."""
    app.command()(serve)
