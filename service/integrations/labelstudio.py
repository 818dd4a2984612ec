"""The Label Studio ML backend protocol under ``/labelstudio``.

A Label Studio project connects to ``http://<host>:8000/labelstudio`` (Settings →
Model → Connect Model). Label Studio calls ``/health`` and ``/setup`` on connect and
before each prediction batch, ``/predict`` for drafts, and ``/webhook`` for
annotation events and the "Start training" button. Handlers parse, call the
core (``prelabel.integrations.labelstudio``) and answer; webhooks are stored
and answered at once, then processed after the response.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

import httpx
from fastapi import APIRouter, BackgroundTasks, Depends, FastAPI, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPBasic, HTTPBasicCredentials

from models.registry import serving_version
from prelabel.database import transaction
from prelabel.drafts import load_draft_confidence, load_draft_mask
from prelabel.errors import PrelabelError, ValidationFailed
from prelabel.integrations.labelstudio import (
    HANDLED_ACTIONS,
    Binding,
    EventContext,
    LabelMapping,
    LsTask,
    LsWebhook,
    StoredEvent,
    TaskPrediction,
    bind_project,
    draft_regions,
    get_binding,
    list_bindings,
    ls_project_key,
    map_labels,
    parse_label_config,
    process_pending_events,
    record_event,
    record_task_draft,
    register_task_image,
    setup_binding,
    task_image,
    task_image_ref,
)
from prelabel.projects import get_project
from prelabel.settings import IntegrationSettings, ServiceSettings, get_integration_settings
from prelabel.workspace import Workspace
from service.deps import PredictorsDep, SettingsDep, WorkspaceDep
from service.drafting import current_draft
from service.integrations.labelstudio_images import ImageSource
from service.integrations.labelstudio_schemas import (
    BindingOut,
    BindingRequest,
    HealthOut,
    PredictOut,
    PredictRequest,
    SetupOut,
    SetupRequest,
    TaskFailure,
    WebhookOut,
)
from service.predictors import PredictorCache

logger = logging.getLogger(__name__)

_basic = HTTPBasic(auto_error=False, realm="prelabel")


def labelstudio_settings() -> IntegrationSettings:
    """The integration settings (overridden in tests through ``dependency_overrides``)."""
    return get_integration_settings()


@dataclass(frozen=True)
class Runtime:
    """What the backend holds while the app runs: HTTP client, predict pool, locks.

    ``images_lock`` makes "find the image with these bytes, else store it" atomic
    between the pool's threads, so two tasks showing one file share one image.
    """

    client: httpx.Client
    pool: ThreadPoolExecutor
    events_lock: threading.Lock
    images_lock: threading.Lock


def get_runtime(request: Request) -> Runtime:
    """The runtime made by the router's lifespan."""
    runtime: Runtime = request.app.state.labelstudio
    return runtime


def make_http_client(settings: IntegrationSettings) -> httpx.Client:
    """The client task images are fetched with, made once at start.

    Looked up through ``app.dependency_overrides`` like the settings, so tests can
    put an ``httpx.MockTransport`` behind it.
    """
    timeout = httpx.Timeout(settings.labelstudio_fetch_timeout_s, connect=5.0)
    return httpx.Client(timeout=timeout)


LsSettingsDep = Annotated[IntegrationSettings, Depends(labelstudio_settings)]
RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def auth_user(
    credentials: Annotated[HTTPBasicCredentials | None, Depends(_basic)], settings: LsSettingsDep
) -> str | None:
    """Check HTTP basic auth when a password is configured; the user name sent, if any.

    Any user name is accepted; the password must equal ``PRELABEL_LABELSTUDIO_PASSWORD``.
    """
    expected = settings.labelstudio_password
    if expected is not None and (
        credentials is None
        or not secrets.compare_digest(
            credentials.password.encode(), expected.get_secret_value().encode()
        )
    ):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="Label Studio backend: HTTP basic auth with the configured password required "
            "(Label Studio: Model → Authentication method: Basic Authentication; webhooks: "
            "an Authorization header)",
            headers={"WWW-Authenticate": 'Basic realm="prelabel"'},
        )
    return credentials.username if credentials and credentials.username else None


AuthUserDep = Annotated[str | None, Depends(auth_user)]


def _image_source(
    client: httpx.Client, settings: IntegrationSettings, max_bytes: int
) -> ImageSource:
    return ImageSource(client=client, max_bytes=max_bytes, url_override=settings.labelstudio_url)


def _process_events(
    workspace: Workspace,
    runtime: Runtime,
    images: ImageSource,
    max_pixels: int,
) -> None:
    ctx = EventContext(blobs=workspace.blobs, images=images, max_pixels=max_pixels)
    with runtime.events_lock:
        process_pending_events(workspace.sessions, ctx)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Runs inside the app's lifespan, so the workspace is open. Reading the settings
    # here makes a placeholder password fail the start, not the first call.
    settings = app.dependency_overrides.get(labelstudio_settings, labelstudio_settings)()
    service: ServiceSettings = app.state.service_settings
    runtime = Runtime(
        client=app.dependency_overrides.get(make_http_client, make_http_client)(settings),
        pool=ThreadPoolExecutor(settings.labelstudio_predict_workers, "labelstudio-predict"),
        events_lock=threading.Lock(),
        images_lock=threading.Lock(),
    )
    app.state.labelstudio = runtime
    images = _image_source(runtime.client, settings, service.max_upload_bytes)
    # Events a stopped process left queued are retried now.
    await run_in_threadpool(
        _process_events, app.state.workspace, runtime, images, service.max_image_pixels
    )
    try:
        yield
    finally:
        # Predictions already running finish (a stopping replica completes work in flight);
        # queued ones are dropped.
        runtime.pool.shutdown(wait=True, cancel_futures=True)
        runtime.client.close()


router = APIRouter(
    prefix="/labelstudio",
    tags=["labelstudio"],
    dependencies=[Depends(auth_user)],
    lifespan=_lifespan,
)


@router.get("/health")
def health() -> HealthOut:
    """Liveness for Label Studio (called with a 1 s timeout)."""
    return HealthOut()


@router.post("/setup")
def setup(body: SetupRequest, workspace: WorkspaceDep, settings: LsSettingsDep) -> SetupOut:
    """Bind the Label Studio project (creating a prelabel project if configured) and map its
    labels; answers the serving model version ("none" before the first model)."""
    with transaction(workspace.sessions) as session:
        binding = setup_binding(
            session,
            ls_project=ls_project_key(body.project),
            label_config=body.label_config,
            hostname=body.hostname,
            access_token=body.access_token,
            auto_create=settings.labelstudio_auto_create,
        )
        serving = serving_version(session, binding.project_id)
    return SetupOut(model_version=serving.version if serving else "none")


@router.post("/predict")
def predict(
    body: PredictRequest,
    workspace: WorkspaceDep,
    predictors: PredictorsDep,
    service: SettingsDep,
    settings: LsSettingsDep,
    runtime: RuntimeDep,
) -> PredictOut:
    """Drafts for a batch of tasks, one ``brushlabels`` region per class present.

    Tasks run in parallel and the answer comes within the configured budget;
    a task that failed or is not ready gets an ``error`` entry instead (Label
    Studio skips it and asks again next time). If every task failed, the first
    error is the answer.
    """
    job = _PredictJob(
        workspace=workspace,
        predictors=predictors,
        images=_image_source(runtime.client, settings, service.max_upload_bytes),
        max_pixels=service.max_image_pixels,
        images_lock=runtime.images_lock,
    )
    binding, mapping = _binding_and_mapping(workspace, body, settings)
    return job.run_batch(
        binding, mapping, body.tasks, runtime.pool, settings.labelstudio_predict_budget_s
    )


@router.post("/webhook")
def webhook(
    body: LsWebhook,
    background: BackgroundTasks,
    workspace: WorkspaceDep,
    service: SettingsDep,
    settings: LsSettingsDep,
    runtime: RuntimeDep,
    user: AuthUserDep,
) -> WebhookOut:
    """Store an annotation event or a training request and answer at once (Label Studio
    waits 1 s); it is processed right after the answer, and retried at the next start if
    the process stops first. Other actions are acknowledged and dropped."""
    if body.action not in HANDLED_ACTIONS:
        return WebhookOut(status="ignored")
    with transaction(workspace.sessions) as session:
        event_id = record_event(session, StoredEvent(webhook=body, auth_user=user))
    images = _image_source(runtime.client, settings, service.max_upload_bytes)
    background.add_task(_process_events, workspace, runtime, images, service.max_image_pixels)
    return WebhookOut(status="queued", event_id=event_id)


@router.get("/bindings")
def get_bindings(workspace: WorkspaceDep) -> list[BindingOut]:
    """Every Label Studio project bound to a prelabel project."""
    with workspace.sessions() as session:
        return [binding_out(b) for b in list_bindings(session)]


@router.put("/bindings/{ls_project}")
def put_binding(ls_project: str, body: BindingRequest, workspace: WorkspaceDep) -> BindingOut:
    """Bind a Label Studio project (its numeric id) to a prelabel project (id or name)."""
    with transaction(workspace.sessions) as session:
        return binding_out(
            bind_project(session, ls_project=ls_project_key(ls_project), project_ref=body.project)
        )


def binding_out(binding: Binding) -> BindingOut:
    """The wire form of a binding (without the token)."""
    return BindingOut(
        ls_project=binding.ls_project,
        project_id=binding.project_id,
        hostname=binding.hostname,
        has_access_token=binding.access_token is not None,
        labels=binding.mapping.classes if binding.mapping else None,
        created_at=binding.created_at,
        updated_at=binding.updated_at,
    )


# --- /predict -------------------------------------------------------------


def _binding_and_mapping(
    workspace: Workspace, body: PredictRequest, settings: IntegrationSettings
) -> tuple[Binding, LabelMapping]:
    ls_project = ls_project_key(body.project)
    with transaction(workspace.sessions) as session:
        binding = get_binding(session, ls_project)
        if binding is None and body.label_config:
            binding = setup_binding(
                session,
                ls_project=ls_project,
                label_config=body.label_config,
                hostname=None,
                access_token=None,
                auto_create=settings.labelstudio_auto_create,
            )
        if binding is None:
            raise ValidationFailed(f"Label Studio project {ls_project} is not set up; call /setup")
        if body.label_config:
            schema = get_project(session, binding.project_id).label_schema
            return binding, map_labels(parse_label_config(body.label_config), schema)
    if binding.mapping is None:
        raise ValidationFailed(f"no label config known for Label Studio project {ls_project}")
    return binding, binding.mapping


@dataclass(frozen=True)
class _PredictJob:
    workspace: Workspace
    predictors: PredictorCache
    images: ImageSource
    max_pixels: int
    images_lock: threading.Lock

    def run_batch(
        self,
        binding: Binding,
        mapping: LabelMapping,
        tasks: list[LsTask],
        pool: ThreadPoolExecutor,
        budget_s: float,
    ) -> PredictOut:
        # Work left when the budget runs out keeps going in the pool: its drafts are
        # stored, so the next "retrieve predictions" finds them ready.
        deadline = time.monotonic() + budget_s
        futures = [pool.submit(self.predict_task, binding, mapping, task) for task in tasks]
        results: list[TaskPrediction | TaskFailure] = []
        errors: list[PrelabelError] = []
        for task, future in zip(tasks, futures, strict=True):
            results.append(self._collect(task, future, deadline, budget_s, errors))
        predictions = [r for r in results if isinstance(r, TaskPrediction)]
        if not predictions and errors:
            raise errors[0]
        logger.info(
            "Label Studio project %s: %d of %d tasks predicted",
            binding.ls_project,
            len(predictions),
            len(tasks),
        )
        version = predictions[0].model_version if predictions else "none"
        return PredictOut(results=results, model_version=version)

    @staticmethod
    def _collect(
        task: LsTask,
        future: Future[TaskPrediction],
        deadline: float,
        budget_s: float,
        errors: list[PrelabelError],
    ) -> TaskPrediction | TaskFailure:
        try:
            return future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            return TaskFailure(
                error=f"task {task.id}: not ready within {budget_s:.0f} s; the draft is still "
                f"being made, retrieve predictions again"
            )
        except PrelabelError as exc:
            logger.warning("Label Studio task %s: %s", task.id, exc)
            errors.append(exc)
            return TaskFailure(error=f"task {task.id}: {exc}")

    def predict_task(self, binding: Binding, mapping: LabelMapping, task: LsTask) -> TaskPrediction:
        """Fetch and store the task's image (once), make or reuse its draft, encode the regions."""
        workspace = self.workspace
        with workspace.sessions() as session:
            image = task_image(session, binding, task.id)
        if image is None:
            ref = task_image_ref(task.data, mapping.data_key, task.id)
            data = self.images.fetch(ref, binding)
            with self.images_lock, transaction(workspace.sessions) as session:
                image = register_task_image(
                    session,
                    workspace.blobs,
                    binding=binding,
                    task_id=task.id,
                    ref=ref,
                    data=data,
                    max_pixels=self.max_pixels,
                )
        project, image, draft = current_draft(
            workspace, self.predictors, binding.project_id, image.id
        )
        with transaction(workspace.sessions) as session:
            record_task_draft(session, binding, task.id, draft)
        regions = draft_regions(
            load_draft_mask(workspace.blobs, draft),
            load_draft_confidence(workspace.blobs, draft),
            mapping=mapping,
            background_id=project.label_schema.background,
            region_prefix=draft.id[:12],
        )
        return TaskPrediction(
            result=regions,
            score=round(draft.mean_confidence, 6),
            model_version=draft.model_version or "none",
        )
