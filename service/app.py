"""The FastAPI application: built by ``create_app`` from explicit settings, nothing global."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from prelabel.settings import ServiceSettings, StorageSettings
from prelabel.workspace import open_workspace
from service.errors import register_error_handlers
from service.integrations import cvat, labelstudio
from service.predictors import PredictorCache
from service.routes import (
    corrections,
    drafts,
    exports,
    health,
    images,
    metrics,
    models,
    projects,
    queue,
    training_runs,
)

logger = logging.getLogger(__name__)


def create_app(storage: StorageSettings, service: ServiceSettings) -> FastAPI:
    """Build the service; the database and blob store open in the lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        workspace = open_workspace(storage)
        app.state.workspace = workspace
        app.state.predictors = PredictorCache(workspace.blobs, threads=service.predictor_threads)
        app.state.service_settings = service
        app.state.storage_settings = storage
        logger.info("prelabel service ready (home %s)", storage.home)
        try:
            yield
        finally:  # also when a later start step fails: no connection is left open
            workspace.engine.dispose()

    app = FastAPI(
        title="prelabel",
        version="0.1.0",
        summary="Model-assisted pre-labeling for semantic segmentation.",
        lifespan=lifespan,
    )
    register_error_handlers(app)
    for module in (
        health,
        projects,
        images,
        drafts,
        corrections,
        metrics,
        training_runs,
        models,
        queue,
        exports,
        cvat,
        labelstudio,
    ):
        app.include_router(module.router)
    return app
