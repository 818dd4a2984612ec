"""The Label Studio ML backend protocol under ``/labelstudio``.

A Label Studio project connects to ``http://<host>:8000/labelstudio`` (Settings →
Model → Connect Model). Label Studio calls ``/health`` and ``/setup`` on connect and
before each prediction batch, ``/predict`` for drafts, and ``/webhook`` for
annotation events and the "Start training" button. Handlers parse, call the
core (``prelabel.integrations.labelstudio``) and answer; webhooks are stored
and answered at once, then processed after the response.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

import httpx
from fastapi import APIRouter, BackgroundTasks, Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool

from models.registry import serving_version
from prelabel.access import Permission, may
from prelabel.database import transaction
from prelabel.drafts import load_draft_confidence, load_draft_mask
from prelabel.errors import ConflictError, PrelabelError, ProjectNotFound, ValidationFailed
from prelabel.images import Image
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
    webhook_project_id,
)
from prelabel.projects import get_project
from prelabel.secret_box import SecretBox
from prelabel.settings import IntegrationSettings, ServiceSettings, get_integration_settings
from prelabel.workspace import Workspace
from service.auth import Caller, CallerDep
from service.deps import PredictorsDep, SettingsDep, WorkspaceDep
from service.drafting import current_draft
from service.integrations.labelstudio_images import ImageSource
from service.integrations.labelstudio_interactive import predict_interactive
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
    secrets: SecretBox


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


def basic_user_name(request: Request) -> str | None:
    """The user name of a basic-auth header (Label Studio's ``basic_auth_user``), if any."""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        name = base64.b64decode(credentials.strip(), validate=True).decode().partition(":")[0]
    except ValueError:  # binascii.Error, UnicodeDecodeError, characters outside ASCII
        return None
    return name or None


def _image_source(runtime: Runtime, settings: IntegrationSettings, max_bytes: int) -> ImageSource:
    return ImageSource(
        client=runtime.client,
        max_bytes=max_bytes,
        secrets=runtime.secrets,
        url_override=settings.labelstudio_url,
    )


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
        secrets=app.state.secret_box,
    )
    app.state.labelstudio = runtime
    images = _image_source(runtime, settings, service.max_upload_bytes)
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
    lifespan=_lifespan,
)


@router.get("/health")
def health() -> HealthOut:
    """Liveness for Label Studio (called with a 1 s timeout)."""
    return HealthOut()


def _check_binding(
    workspace: Workspace, caller: Caller, ls_project: str, auto_create: bool
) -> Binding | None:
    """The existing binding if the caller may use it; None if it may create one.

    A binding to a project the caller is not a member of answers as no binding at all:
    a connection never learns what other clients' connections are bound to.

    Raises:
        Forbidden: A member of the bound project without the right.
        ValidationFailed: Not bound (for this caller), and it may not create a project.
    """
    with workspace.sessions() as session:
        binding = get_binding(session, ls_project)
    if binding is not None:
        try:
            caller.require(workspace, binding.project_id, _rule_permission(caller))
            return binding
        except ProjectNotFound:
            pass
    elif auto_create and caller.principal.is_admin:
        return None
    raise _not_bound(ls_project)


def _not_bound(ls_project: str) -> ValidationFailed:
    return ValidationFailed(
        f"Label Studio project {ls_project} is not bound to a prelabel project of yours: a "
        f"manager binds it (PUT /labelstudio/bindings/{ls_project}), or an admin's token "
        f"connects it with PRELABEL_LABELSTUDIO_AUTO_CREATE on"
    )


def _rule_permission(caller: Caller) -> Permission:
    if caller.rule.permission is None:
        raise RuntimeError("a Label Studio route without a project permission")
    return caller.rule.permission


def _seal(box: SecretBox, binding: Binding | None, token: str | None) -> str | None:
    """The access token sealed for storage; the stored one if it holds the same token
    (``/setup`` runs before every batch: no rewrite each time)."""
    if not token:
        return None
    stored = binding.access_token.get_secret_value() if binding and binding.access_token else None
    if stored is not None:
        try:
            if box.open(stored) == token:
                return stored
        except PrelabelError:
            pass  # sealed with an older key: seal again
    return box.seal(token)


@router.post("/setup")
def setup(
    body: SetupRequest,
    workspace: WorkspaceDep,
    settings: LsSettingsDep,
    runtime: RuntimeDep,
    caller: CallerDep,
) -> SetupOut:
    """Bind the Label Studio project (creating a prelabel project if configured and the
    token is an admin's) and map its labels; answers the serving model version ("none"
    before the first model)."""
    ls_project = ls_project_key(body.project)
    existing = _check_binding(workspace, caller, ls_project, settings.labelstudio_auto_create)
    with transaction(workspace.sessions) as session:
        binding = setup_binding(
            session,
            ls_project=ls_project,
            label_config=body.label_config,
            hostname=body.hostname,
            access_token=_seal(runtime.secrets, existing, body.access_token),
            auto_create=settings.labelstudio_auto_create,
            actor=caller.name,
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
    caller: CallerDep,
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
        images=_image_source(runtime, settings, service.max_upload_bytes),
        max_pixels=service.max_image_pixels,
        images_lock=runtime.images_lock,
        actor=caller.name,
    )
    binding, mapping = _binding_and_mapping(workspace, body, settings, caller)
    context = body.params.context if body.params else None
    if context is not None and context.result:
        image = job.image_of(binding, mapping, body.tasks[0])
        return predict_interactive(
            workspace, predictors, image, mapping, context.result, caller.name
        )
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
    caller: CallerDep,
    request: Request,
) -> WebhookOut:
    """Store an annotation event or a training request and answer at once (Label Studio
    waits 1 s); it is processed right after the answer, and retried at the next start if
    the process stops first. Other actions are acknowledged and dropped.

    The caller needs, in the bound project, the right to write corrections (annotation
    events) or to run training (``START_TRAINING``); the check is made before storing.
    """
    if body.action not in HANDLED_ACTIONS:
        return WebhookOut(status="ignored")
    with workspace.sessions() as session:
        project_id = webhook_project_id(session, body)
    needed = Permission.RUN_TRAINING if body.action == "START_TRAINING" else None
    try:
        if project_id is None:
            raise ProjectNotFound("")
        caller.require(workspace, project_id, needed or _rule_permission(caller))
    except ProjectNotFound as exc:
        ls_project = str(body.project.id) if body.project else "?"
        raise _not_bound(ls_project) from exc
    stored = StoredEvent(webhook=body, auth_user=basic_user_name(request), actor=caller.name)
    with transaction(workspace.sessions) as session:
        event_id = record_event(session, stored)
    images = _image_source(runtime, settings, service.max_upload_bytes)
    background.add_task(_process_events, workspace, runtime, images, service.max_image_pixels)
    return WebhookOut(status="queued", event_id=event_id)


@router.get("/bindings")
def get_bindings(caller: CallerDep, workspace: WorkspaceDep) -> list[BindingOut]:
    """The Label Studio projects bound to prelabel projects the caller manages."""
    with workspace.sessions() as session:
        return [
            binding_out(b)
            for b in list_bindings(session)
            if may(session, caller.principal, b.project_id, Permission.MANAGE_INTEGRATIONS)
        ]


@router.put("/bindings/{ls_project}")
def put_binding(
    ls_project: str, body: BindingRequest, caller: CallerDep, workspace: WorkspaceDep
) -> BindingOut:
    """Bind a Label Studio project (its numeric id) to a prelabel project (id or name).

    Needs the right to manage integrations in the target project, and in the project it
    was bound to before, if any.
    """
    key = ls_project_key(ls_project)
    target = caller.require(workspace, body.project, _rule_permission(caller))
    with workspace.sessions() as session:
        previous = get_binding(session, key)
    if previous is not None and previous.project_id != target.id:
        with workspace.sessions() as session:
            allowed = may(
                session, caller.principal, previous.project_id, Permission.MANAGE_INTEGRATIONS
            )
        if not allowed:
            raise ConflictError(
                f"Label Studio project {key} is bound to another project; its manager or an "
                f"admin must rebind it"
            )
    with transaction(workspace.sessions) as session:
        return binding_out(
            bind_project(session, ls_project=key, project_ref=target.id, actor=caller.name)
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
    workspace: Workspace, body: PredictRequest, settings: IntegrationSettings, caller: Caller
) -> tuple[Binding, LabelMapping]:
    ls_project = ls_project_key(body.project)
    existing = _check_binding(workspace, caller, ls_project, settings.labelstudio_auto_create)
    with transaction(workspace.sessions) as session:
        binding = get_binding(session, ls_project) if existing is not None else None
        if binding is None and body.label_config:
            binding = setup_binding(
                session,
                ls_project=ls_project,
                label_config=body.label_config,
                hostname=None,
                access_token=None,
                auto_create=settings.labelstudio_auto_create,
                actor=caller.name,
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
    actor: str

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

    def image_of(self, binding: Binding, mapping: LabelMapping, task: LsTask) -> Image:
        """The task's image, fetched and stored on first use."""
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
                    actor=self.actor,
                )
        return image

    def predict_task(self, binding: Binding, mapping: LabelMapping, task: LsTask) -> TaskPrediction:
        """Fetch and store the task's image (once), make or reuse its draft, encode the regions."""
        workspace = self.workspace
        image = self.image_of(binding, mapping, task)
        project, image, draft = current_draft(
            workspace,
            self.predictors,
            binding.project_id,
            image.id,
            actor=self.actor,
            served_as="labelstudio",
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
