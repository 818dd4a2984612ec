"""Bulk pre-labeling: the job's routes (progress, failures, cancel), resume after a crash,
the CLI, and no draft computed twice across processes (the worker and a request)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import typer
from fastapi.testclient import TestClient
from sqlalchemy import delete, func, select
from typer.testing import CliRunner

from models.bulk import BulkOptions, run_bulk_job
from models.predictor import OnnxPredictor, Prediction
from models.registry import ModelRecord
from models.serving import load_predictor
from prelabel.audit import AuditQuery, list_events
from prelabel.database import transaction
from prelabel.draft_claims import release_claim, try_claim
from prelabel.images import get_image
from prelabel.jobs import Job, JobStatus, JobTask, claim_job, claim_next_job, recover_stale_jobs
from prelabel.settings import get_service_settings, get_storage_settings, get_worker_settings
from prelabel.tables import DraftRow, JobRow
from prelabel.workspace import Workspace
from tests.backends import use_storage
from tests.synthetic import png_bytes, shapes_sample
from tests.unit.service.test_cvat import serve_three_bands
from training.cli import register
from training.worker import execute_drafts_job, worker_alive

BULK = "/projects/{}/bulk-drafts"


def _upload(client: TestClient, project: str, count: int) -> list[str]:
    files = [
        ("files", (f"{i}.png", png_bytes(shapes_sample(40 + i)[0]), "image/png"))
        for i in range(count)
    ]
    answer = client.post(f"/projects/{project}/images", files=files)
    assert answer.status_code == 201, answer.text
    return [image["id"] for image in answer.json()["images"]]


@pytest.fixture
def project(
    make_project: Callable[[str], str], workspace: Workspace, tmp_path: Path
) -> Iterator[str]:
    """A project with a serving 1x1-convolution model (real onnxruntime) and no images."""
    project_id = make_project("bulk")
    serve_three_bands(workspace, tmp_path, project_id)
    with transaction(workspace.sessions) as session:
        # The promotion queued a drafts job of an empty project: out of the way.
        session.execute(delete(JobRow).where(JobRow.project_id == project_id))
    yield project_id


def _drafts(workspace: Workspace, image_id: str | None = None) -> int:
    with workspace.sessions() as session:
        query = select(func.count()).select_from(DraftRow)
        if image_id is not None:
            query = query.where(DraftRow.image_id == image_id)
        return int(session.scalar(query) or 0)


def _load(workspace: Workspace) -> Callable[[ModelRecord], OnnxPredictor]:
    return lambda record: load_predictor(workspace.blobs, record)


def _claim(workspace: Workspace, job_id: str, worker: str = "test-worker") -> Job:
    return claim_job(workspace.sessions, job_id, worker)


def _uploaded_and_claimed(
    client: TestClient, project: str, workspace: Workspace, count: int
) -> tuple[list[str], Job]:
    """Upload ``count`` images; claim the drafts job the upload queued."""
    ids = _upload(client, project, count)
    (queued,) = client.get(BULK.format(project)).json()
    return ids, _claim(workspace, queued["id"])


@pytest.mark.parametrize("lanes", [1, 3])
def test_a_bulk_job_reports_progress_and_each_failure_with_its_reason(
    client: TestClient, project: str, workspace: Workspace, lanes: int
) -> None:
    ids = _upload(client, project, 4)
    with workspace.sessions() as session:
        corrupt = get_image(session, project, ids[2])
    workspace.blobs.put(corrupt.blob_key, b"\x89PNG\r\n\x1a\n but not an image")
    auto = client.get(BULK.format(project)).json()
    assert [job["status"] for job in auto] == ["queued"]  # the upload queued one
    started = client.post(BULK.format(project))
    assert started.status_code == 202, started.text
    job = started.json()
    assert job["id"] == auto[0]["id"] and job["image_ids"] is None  # absorbed by the queued one

    status = execute_drafts_job(workspace, _claim(workspace, job["id"]), threads=lanes)

    assert status is JobStatus.SUCCEEDED
    shown = client.get(f"{BULK.format(project)}/{job['id']}").json()
    progress = shown["progress"]
    assert shown["status"] == "succeeded" and progress["model_version"] == "v1"
    assert (progress["total"], progress["done"], progress["made"], progress["failed"]) == (
        4,
        4,
        3,
        1,
    )
    (failure,) = progress["failures"]
    assert failure["image_id"] == corrupt.id and failure["filename"] == "2.png"
    assert "not a readable image" in failure["reason"]
    assert progress["rate_images_per_s"] > 0 and progress["eta_s"] == 0
    assert _drafts(workspace) == 3 and _drafts(workspace, corrupt.id) == 0
    fetched = client.get(f"/projects/{project}/images/{ids[0]}/draft?format=json")
    assert fetched.status_code == 200
    assert _drafts(workspace) == 3  # served the precomputed draft
    with workspace.sessions() as session:
        events = list_events(session, AuditQuery(project_id=project, limit=100))
    assert "bulk_drafts_queued" in [event.action for event in events]


def test_a_listed_bulk_job_drafts_only_its_images_and_checks_them(
    client: TestClient, project: str, workspace: Workspace
) -> None:
    ids = _upload(client, project, 3)
    with transaction(workspace.sessions) as session:
        session.execute(delete(JobRow).where(JobRow.project_id == project))
    unknown = client.post(BULK.format(project), json={"image_ids": [ids[0], "nope"]})
    assert unknown.status_code == 404 and unknown.json()["code"] == "image_not_found"
    assert "nope" in unknown.json()["detail"]
    empty = client.post(BULK.format(project), json={"image_ids": []})
    assert empty.status_code == 422
    job = client.post(BULK.format(project), json={"image_ids": [ids[1]]}).json()
    again = client.post(BULK.format(project), json={"image_ids": [ids[2], ids[1]]}).json()
    assert again["id"] == job["id"] and again["image_ids"] == [ids[1], ids[2]]  # merged

    execute_drafts_job(workspace, _claim(workspace, job["id"]))

    assert [_drafts(workspace, image_id) for image_id in ids] == [0, 1, 1]
    assert client.get(f"{BULK.format(project)}/{'0' * 32}").json()["code"] == ("bulk_job_not_found")


def test_a_listed_bulk_job_keeps_each_image_once_and_checks_a_list_of_any_length(
    client: TestClient, project: str, workspace: Workspace
) -> None:
    ids = _upload(client, project, 2)
    with transaction(workspace.sessions) as session:
        session.execute(delete(JobRow).where(JobRow.project_id == project))
    # Over 65,535 ids: PostgreSQL takes no more parameters in one query (a 500).
    unknown = [f"x{i}" for i in range(70_000)]
    refused = client.post(BULK.format(project), json={"image_ids": [ids[0], *unknown]})
    assert refused.status_code == 404 and "'x0, x1, x2, x3, x4 …'" in refused.json()["detail"]
    assert client.get(BULK.format(project)).json() == []
    # Duplicates were stored as asked (and counted in the audit trail).
    listed = [ids[1]] * 70_000 + [ids[0], ids[1]]
    job = client.post(BULK.format(project), json={"image_ids": listed})
    assert job.status_code == 202, job.text
    assert job.json()["image_ids"] == [ids[1], ids[0]]
    queued_only = AuditQuery(project_id=project, action="bulk_drafts_queued")
    with workspace.sessions() as session:
        (queued,) = list_events(session, queued_only)
    assert queued.details["images"] == 2


def test_cancel_stops_a_running_job_before_its_next_image(
    client: TestClient, project: str, workspace: Workspace
) -> None:
    _, run = _uploaded_and_claimed(client, project, workspace, 5)

    def cancel_after_two(progress: Any) -> None:
        if progress.done == 2:  # reported after each image: the second one is stored
            answer = client.post(f"{BULK.format(project)}/{run.id}/cancel")
            assert answer.status_code == 200 and answer.json()["status"] == "cancelled"

    status = run_bulk_job(workspace, run, _load(workspace), on_progress=cancel_after_two)

    assert status is JobStatus.CANCELLED
    shown = client.get(f"{BULK.format(project)}/{run.id}").json()
    assert shown["status"] == "cancelled" and shown["progress"]["made"] == 2
    assert _drafts(workspace) == 2  # no image was started after the cancel
    assert client.post(f"{BULK.format(project)}/{run.id}/cancel").status_code == 409
    queued_again = client.post(BULK.format(project)).json()
    cancelled = client.post(f"{BULK.format(project)}/{queued_again['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    assert claim_next_job(workspace.sessions, "w") is None  # a cancelled job is never run


class _Crash(BaseException):
    """The worker process dies (kill -9): nothing of it runs any more."""


def _dead_worker() -> str:
    # A pid that surely is not running on this host any more.
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return f"{socket.gethostname()}:{child.pid}"


def test_a_job_whose_worker_died_resumes_where_it_stopped(
    client: TestClient, project: str, workspace: Workspace
) -> None:
    ids = _upload(client, project, 5)
    (queued,) = client.get(BULK.format(project)).json()
    dead = _dead_worker()
    run = _claim(workspace, queued["id"], dead)

    def die_on_the_third(progress: Any) -> None:
        if progress.made == 2:
            raise _Crash  # after claiming the third image, before drafting it

    with pytest.raises(_Crash):
        run_bulk_job(workspace, run, _load(workspace), on_progress=die_on_the_third)
    assert _drafts(workspace) == 2
    with transaction(workspace.sessions) as session:
        (retry,) = recover_stale_jobs(session, stale_after_s=300, worker_alive=worker_alive)
    assert retry.retry_of == run.id and retry.task is JobTask.DRAFTS
    assert client.get(f"{BULK.format(project)}/{run.id}").json()["status"] == "failed"
    resumed = claim_next_job(workspace.sessions, "another-worker")
    assert resumed is not None and resumed.id == retry.id

    assert execute_drafts_job(workspace, resumed) is JobStatus.SUCCEEDED

    progress = client.get(f"{BULK.format(project)}/{retry.id}").json()["progress"]
    assert (progress["total"], progress["skipped"], progress["made"]) == (5, 2, 3)
    assert [_drafts(workspace, image_id) for image_id in ids] == [1] * 5  # none made twice


def test_drafts_already_there_are_counted_at_once_and_a_job_with_none_left_loads_no_model(
    client: TestClient, project: str, workspace: Workspace
) -> None:
    ids, first = _uploaded_and_claimed(client, project, workspace, 4)
    for image_id in ids[:2]:  # the two oldest, drafted by requests
        assert client.get(f"/projects/{project}/images/{image_id}/draft").status_code == 200
    reported: list[Any] = []

    assert (
        run_bulk_job(workspace, first, _load(workspace), on_progress=reported.append)
        is JobStatus.SUCCEEDED
    )

    # Not claimed one by one: the first image the job drafts already reports both.
    assert (reported[0].made, reported[0].skipped) == (1, 2)
    assert [_drafts(workspace, image_id) for image_id in ids] == [1] * 4

    def no_model(record: ModelRecord) -> OnnxPredictor:
        raise AssertionError("a job with every draft there loaded the model")

    again = client.post(BULK.format(project))
    assert again.status_code == 202, again.text
    status = run_bulk_job(workspace, _claim(workspace, again.json()["id"]), no_model)

    assert status is JobStatus.SUCCEEDED
    shown = client.get(f"{BULK.format(project)}/{again.json()['id']}").json()
    assert (shown["progress"]["skipped"], shown["progress"]["made"]) == (4, 0)
    assert shown["decision"] == "0 drafts made, 4 already there, 0 failed"


def test_prelabel_all_runs_the_job_with_a_progress_bar(
    client: TestClient, project: str, workspace: Workspace
) -> None:
    ids = _upload(client, project, 3)
    commands = typer.Typer()
    register(commands)  # what the ``prelabel`` console script does through its entry point
    with pytest.MonkeyPatch.context() as env:
        use_storage(env, client.app.state.storage_settings)  # type: ignore[attr-defined]
        for cached in (get_storage_settings, get_service_settings, get_worker_settings):
            cached.cache_clear()
        try:
            result = CliRunner().invoke(commands, ["prelabel-all", "--project", "bulk"])
        finally:
            for cached in (get_storage_settings, get_service_settings, get_worker_settings):
                cached.cache_clear()
    assert result.exit_code == 0, result.output
    assert "3 made, 0 already there, 0 failed" in result.output
    assert [_drafts(workspace, image_id) for image_id in ids] == [1, 1, 1]
    (job,) = client.get(BULK.format(project)).json()
    assert job["status"] == "succeeded" and job["worker"] is not None


class _GatedPredictor(OnnxPredictor):
    """The real predictor, held at the gate while the test looks (the worker is busy)."""

    entered: threading.Event
    gate: threading.Event

    def predict(self, image: npt.NDArray[np.uint8]) -> Prediction:
        self.entered.set()
        assert self.gate.wait(20)
        return super().predict(image)


def _gated(workspace: Workspace) -> tuple[Callable[[ModelRecord], OnnxPredictor], Any]:
    entered, gate = threading.Event(), threading.Event()

    def load(record: ModelRecord) -> OnnxPredictor:
        predictor = load_predictor(workspace.blobs, record)
        predictor.__class__ = _GatedPredictor
        predictor.entered, predictor.gate = entered, gate  # type: ignore[attr-defined]
        return predictor

    return load, (entered, gate)


def test_a_request_waits_for_the_draft_the_worker_is_computing(
    client: TestClient, project: str, workspace: Workspace
) -> None:
    (first, _), run = _uploaded_and_claimed(client, project, workspace, 2)
    load, (entered, gate) = _gated(workspace)
    worker = threading.Thread(target=run_bulk_job, args=(workspace, run, load))
    worker.start()
    assert entered.wait(20)  # the worker is computing the first image's draft
    answers: list[Any] = []
    request = threading.Thread(
        target=lambda: answers.append(
            client.get(f"/projects/{project}/images/{first}/draft?format=json")
        )
    )
    request.start()
    request.join(1.5)
    assert request.is_alive() and _drafts(workspace, first) == 0  # waiting, not computing
    gate.set()
    request.join(20)
    worker.join(20)
    (answer,) = answers
    assert answer.status_code == 200, answer.text
    with workspace.sessions() as session:
        (stored,) = session.scalars(select(DraftRow).where(DraftRow.image_id == first))
    assert answer.json()["draft_id"] == stored.id  # the worker's draft, computed once


def test_the_bulk_job_yields_to_a_request_computing_a_draft(
    client: TestClient, project: str, workspace: Workspace
) -> None:
    ids, run = _uploaded_and_claimed(client, project, workspace, 3)
    with transaction(workspace.sessions) as session:
        # A person's request is computing the first image's draft (interactive claim).
        assert try_claim(
            session,
            project_id=project,
            image_id=ids[0],
            model_version="v1",
            holder="request:x",
            interactive=True,
            lease_s=60,
        )
    statuses: list[JobStatus] = []
    options = BulkOptions(yield_max_s=30)
    worker = threading.Thread(
        target=lambda: statuses.append(
            run_bulk_job(workspace, run, _load(workspace), options=options)
        )
    )
    worker.start()
    time.sleep(1.0)
    assert _drafts(workspace) == 0  # the job waits while the person's draft is computed
    client.get(f"/projects/{project}/images/{ids[1]}/draft?format=json")  # served meanwhile
    with transaction(workspace.sessions) as session:
        release_claim(session, image_id=ids[0], model_version="v1", holder="request:x")
    worker.join(20)
    assert statuses == [JobStatus.SUCCEEDED]
    progress = client.get(f"{BULK.format(project)}/{run.id}").json()["progress"]
    assert progress["yielded_s"] >= 0.9
    assert (progress["made"], progress["skipped"]) == (2, 1)  # ids[1] was drafted already
    assert [_drafts(workspace, image_id) for image_id in ids] == [1, 1, 1]


def test_a_bulk_job_skips_a_draft_a_request_is_computing(
    client: TestClient, project: str, workspace: Workspace
) -> None:
    ids = _upload(client, project, 2)
    (queued,) = client.get(BULK.format(project)).json()
    with transaction(workspace.sessions) as session:
        assert try_claim(
            session,
            project_id=project,
            image_id=ids[0],
            model_version="v1",
            holder="request:y",
            interactive=True,
            lease_s=60,
        )
    options = BulkOptions(yield_max_s=0)  # do not wait: the claim is seen as taken
    run = _claim(workspace, queued["id"])
    assert run_bulk_job(workspace, run, _load(workspace), options=options) is JobStatus.SUCCEEDED
    assert [_drafts(workspace, image_id) for image_id in ids] == [0, 1]
    progress = client.get(f"{BULK.format(project)}/{run.id}").json()["progress"]
    assert (progress["made"], progress["skipped"]) == (1, 1)
