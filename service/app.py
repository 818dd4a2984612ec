"""The FastAPI application: built by ``create_app`` from explicit settings, nothing global."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models.tiling import Tiling
from prelabel.accounts import ADMIN_TOKEN_FILE, IssuedToken, bootstrap_admin
from prelabel.blobs import sweep_temporary
from prelabel.database import write_transaction
from prelabel.deferred_writes import PeriodicFlush
from prelabel.report_snapshots import SectionsCache
from prelabel.review_metrics import AgreementCache
from prelabel.secret_box import load_secret_box, write_private_file
from prelabel.settings import AuthMode, SecuritySettings, ServiceSettings, StorageSettings
from prelabel.workspace import Workspace, open_workspace
from service.admission import ComputedReadTurns
from service.auth import authorize, check_every_route_has_a_rule
from service.errors import ERROR_RESPONSES, register_error_handlers
from service.integrations import cvat, cvat_interactor, labelstudio
from service.loop_lag import loop_lag_sampled
from service.predictors import PredictorCache, runtime_options
from service.request_guards import (
    JsonBodyLimit,
    reject_nul_characters,
    reject_unknown_query_parameters,
)
from service.routes import (
    audit,
    bulk_drafts,
    corrections,
    dashboard,
    drafts,
    erasure,
    exports,
    health,
    images,
    members,
    metrics,
    models,
    projects,
    prometheus,
    queue,
    refine,
    reviews,
    training_runs,
    users,
)
from service.server_timing import ServerTiming
from service.telemetry import install_error_counter, observe_loop_lag

logger = logging.getLogger(__name__)


def bootstrap_access(
    workspace: Workspace, storage: StorageSettings, security: SecuritySettings
) -> None:
    """First start: create ``admin`` and write its token (mode 0600); warn when auth is off."""
    if security.auth is AuthMode.OFF:
        logger.warning(
            "PRELABEL_AUTH=off: every caller acts as an admin, nothing is access-checked and "
            "the audit trail names everyone 'local'. Use it only on a single-user machine."
        )
        return
    path = storage.home.resolve() / ADMIN_TOKEN_FILE

    def create_admin(session: Session) -> IssuedToken | None:
        issued = bootstrap_admin(session, actor="bootstrap")
        if issued is not None:
            write_private_file(path, issued.token + "\n", replace=True)
        return issued

    # Replicas starting together: on SQLite the later one finds the database busy and its
    # retry sees the admin; on PostgreSQL it breaks the unique user name.
    try:
        issued = write_transaction(workspace.sessions, create_admin)
    except IntegrityError:
        logger.info("user 'admin' was created by another process")
        return
    if issued is not None:
        logger.warning("created user 'admin'; its API token is in %s (mode 0600)", path)


def create_app(
    storage: StorageSettings, service: ServiceSettings, security: SecuritySettings
) -> FastAPI:
    """Build the service; the database and blob store open in the lifespan.

    Every route passes the app-wide access check (``service.auth.authorize``); the
    app refuses to build if a route has no rule in ``service.access_rules``.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        workspace = open_workspace(storage)
        sweep_temporary(workspace.blobs)
        app.state.workspace = workspace
        app.state.predictors = PredictorCache(
            workspace.blobs,
            tiling=Tiling(service.tile_px, service.tile_overlap_px),
            lease_s=service.draft_lease_s,
            runtime=runtime_options(service),
            batch_window_s=service.batch_window_ms / 1000,
            batch_max_images=service.batch_max_images,
        )
        app.state.service_settings = service
        app.state.agreement_cache = AgreementCache()
        app.state.sections_cache = SectionsCache(service.metrics_sections_max_age_s)
        app.state.computed_read_turns = ComputedReadTurns(service.computed_reads_at_once)
        app.state.security_settings = security
        app.state.storage_settings = storage
        deferred_writes = PeriodicFlush(
            workspace.deferred, workspace.sessions, interval_s=service.audit_flush_s
        )
        deferred_writes.start()
        try:
            app.state.secret_box = load_secret_box(security, storage.home)
            bootstrap_access(workspace, storage, security)
            logger.info("prelabel service ready (home %s, auth %s)", storage.home, security.auth)
            async with loop_lag_sampled(service.loop_lag_interval_s, observe_loop_lag):
                yield
        finally:  # also when a later start step fails: no connection is left open
            deferred_writes.stop()
            workspace.engine.dispose()

    app = FastAPI(
        title="prelabel",
        version="0.1.0",
        summary="Model-assisted pre-labeling for semantic segmentation.",
        lifespan=lifespan,
        dependencies=[
            Depends(reject_nul_characters),  # first: the access check looks the project up
            Depends(authorize),
            Depends(reject_unknown_query_parameters),
        ],
        responses=ERROR_RESPONSES,
    )
    register_error_handlers(app)
    # The body limit sits right around the app (added first: innermost), so its 413 reaches
    # FastAPI's body reading as an HTTPException, not through another middleware's stream.
    app.add_middleware(JsonBodyLimit, max_bytes=service.max_json_bytes)
    install_error_counter(app)
    app.add_middleware(ServerTiming)  # added last: outermost, its time covers the others
    for module in (
        health,
        prometheus,
        users,
        audit,
        projects,
        members,
        erasure,
        images,
        drafts,
        refine,
        corrections,
        metrics,
        training_runs,
        bulk_drafts,
        models,
        queue,
        reviews,
        exports,
        dashboard,
        cvat,
        cvat_interactor,
        labelstudio,
    ):
        app.include_router(module.router)
    check_every_route_has_a_rule(app)
    return app
