"""Training triggers on a real workspace: corrections in, policy-queued runs out."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, select, update

from prelabel.corrections import record_correction, submit_correction
from prelabel.database import transaction
from prelabel.images import add_image
from prelabel.jobs import (
    Job,
    JobStatus,
    RunKind,
    RunTrigger,
    claim_job,
    finish_job,
    list_training_runs,
)
from prelabel.policy import TrainingPolicy
from prelabel.projects import Project, ProjectSpec, create_project, get_project
from prelabel.tables import CorrectionRow, JobRow, ModelStatus, ModelVersionRow, utcnow
from prelabel.triggers import enqueue_due_runs, evaluate_trigger, maybe_enqueue_training
from prelabel.workspace import Workspace
from tests.synthetic import SHAPES_CLASSES, png_bytes, shapes_sample

POLICY = TrainingPolicy(first_model_after=3, retrain_after=2)


def _synchronous_off(dbapi_connection: Any, _record: object) -> None:
    dbapi_connection.execute("PRAGMA synchronous=OFF")


@pytest.fixture(autouse=True)
def _fast_disk(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """Durability is not under test here: no fsync keeps the module fast on a busy disk."""
    if workspace.engine.dialect.name == "sqlite":  # the PostgreSQL test server has fsync off
        event.listen(workspace.engine, "connect", _synchronous_off)
        workspace.engine.dispose()
    monkeypatch.setattr("prelabel.blobs.os.fsync", lambda _fd: None)


def _project(
    workspace: Workspace, name: str = "shapes", policy: TrainingPolicy = POLICY
) -> Project:
    spec = ProjectSpec.model_validate(
        {"name": name, "classes": SHAPES_CLASSES, "training_policy": policy}
    )
    with transaction(workspace.sessions) as session:
        return create_project(session, spec, actor="test")


def _correct(workspace: Workspace, project: Project, seed: int, *, enqueue: bool = True) -> str:
    """Upload image ``seed``, correct it; then ask the policy (as the service does)."""
    image, mask = shapes_sample(seed)
    with transaction(workspace.sessions) as session:
        stored = add_image(
            session,
            workspace.blobs,
            project_id=project.id,
            filename=f"{seed}.png",
            data=png_bytes(image),
            max_pixels=64 * 64,
            actor="test",
        )
        submit_correction(
            session, workspace.blobs, project=project, image=stored, mask=mask, annotator="ann"
        )
        if not enqueue:
            return ""
        run = maybe_enqueue_training(session, project)
        return run.id if run else ""


def _runs(workspace: Workspace, project: Project) -> list[Job]:
    with workspace.sessions() as session:
        return list_training_runs(session, project.id)


def _complete(workspace: Workspace, run_id: str, status: JobStatus = JobStatus.SUCCEEDED) -> None:
    claim_job(workspace.sessions, run_id, "w1")
    with transaction(workspace.sessions) as session:
        finish_job(session, run_id, status=status)


def _serve_model(
    workspace: Workspace,
    project: Project,
    run_id: str,
    number: int,
    status: ModelStatus = ModelStatus.SERVING,
) -> None:
    with transaction(workspace.sessions) as session:
        if status is ModelStatus.SERVING:
            session.execute(
                update(ModelVersionRow)
                .where(ModelVersionRow.project_id == project.id)
                .values(status=ModelStatus.RETIRED)
            )
        session.add(
            ModelVersionRow(
                project_id=project.id,
                number=number,
                version=f"v{number:04d}",
                status=status,
                onnx_key=f"projects/{project.id}/models/{number}.onnx",
                onnx_sha256="0" * 64,
                checkpoint_key=f"projects/{project.id}/models/{number}.pt",
                checkpoint_sha256="0" * 64,
                config={},
                metrics={},
                trained_on=[],
                held_out=[],
                training_run_id=run_id,
                promoted_at=utcnow(),
            )
        )


def _let_time_pass(workspace: Workspace, project: Project, minutes: float) -> None:
    """Shift the project's runs and corrections into the past, as if ``minutes`` went by."""
    delta = timedelta(minutes=minutes)
    with transaction(workspace.sessions) as session:
        for run in session.scalars(select(JobRow).where(JobRow.project_id == project.id)):
            run.created_at -= delta
            if run.started_at is not None:
                run.started_at -= delta
        for correction in session.scalars(
            select(CorrectionRow).where(CorrectionRow.project_id == project.id)
        ):
            correction.created_at -= delta


def test_first_run_is_queued_at_the_threshold_and_is_full(workspace: Workspace) -> None:
    project = _project(workspace)

    queued = [_correct(workspace, project, seed) for seed in range(3)]

    assert queued[:2] == ["", ""]
    [run] = _runs(workspace, project)
    assert queued[2] == run.id
    assert run.status is JobStatus.QUEUED
    assert run.trigger is RunTrigger.POLICY
    assert run.kind is RunKind.FULL


def test_more_corrections_join_the_queued_run(workspace: Workspace) -> None:
    project = _project(workspace)
    first = [_correct(workspace, project, seed) for seed in range(3)][-1]

    later = [_correct(workspace, project, seed) for seed in range(3, 5)]

    assert later == [first, first]
    assert [run.id for run in _runs(workspace, project)] == [first]


def test_a_correction_during_the_first_run_queues_one_follow_up(workspace: Workspace) -> None:
    project = _project(workspace)
    first = [_correct(workspace, project, seed) for seed in range(3)][-1]
    claim_job(workspace.sessions, first, "w1")

    follow_up = _correct(workspace, project, 3)
    joined = _correct(workspace, project, 4)

    assert follow_up not in ("", first)
    assert joined == follow_up
    statuses = {run.id: run.status for run in _runs(workspace, project)}
    assert statuses == {first: JobStatus.RUNNING, follow_up: JobStatus.QUEUED}


def test_after_a_serving_model_new_corrections_queue_an_incremental_run(
    workspace: Workspace,
) -> None:
    project = _project(workspace)
    first = [_correct(workspace, project, seed) for seed in range(3)][-1]
    _complete(workspace, first)
    _serve_model(workspace, project, first, 1)

    queued = [_correct(workspace, project, seed) for seed in range(3, 5)]

    assert queued[0] == ""
    run = next(run for run in _runs(workspace, project) if run.id == queued[1])
    assert run.status is JobStatus.QUEUED
    assert run.trigger is RunTrigger.POLICY
    assert run.kind is RunKind.INCREMENTAL


def test_corrections_made_while_a_run_was_queued_are_not_new_after_it(
    workspace: Workspace,
) -> None:
    # A run trains on what is there when it starts, so what joined the queue is not new.
    project = _project(workspace)
    first = [_correct(workspace, project, seed) for seed in range(5)][-1]
    _complete(workspace, first)
    _serve_model(workspace, project, first, 1)

    with workspace.sessions() as session:
        decision = evaluate_trigger(session, project)
    one_new = _correct(workspace, project, 5)

    assert not decision.trigger
    assert decision.reason.startswith("0/2")
    assert one_new == ""
    assert [run.id for run in _runs(workspace, project)] == [first]


@pytest.mark.parametrize("status", [ModelStatus.REJECTED, ModelStatus.CANDIDATE])
def test_only_a_serving_version_counts_as_a_model(
    workspace: Workspace, status: ModelStatus
) -> None:
    project = _project(workspace)
    first = [_correct(workspace, project, seed) for seed in range(3)][-1]
    _complete(workspace, first)
    _serve_model(workspace, project, first, 1, status=status)

    # Without a serving model, one new correction retries the first (full) model.
    retry = _correct(workspace, project, 3)

    assert retry not in ("", first)
    assert next(run for run in _runs(workspace, project) if run.id == retry).kind is RunKind.FULL


def test_failed_first_run_is_not_requeued_until_something_is_new(workspace: Workspace) -> None:
    project = _project(workspace)
    first = [_correct(workspace, project, seed) for seed in range(3)][-1]
    _complete(workspace, first, JobStatus.FAILED)

    with transaction(workspace.sessions) as session:
        again = maybe_enqueue_training(session, project)
    retry = _correct(workspace, project, 3)

    assert again is None
    assert retry not in ("", first)
    assert next(run for run in _runs(workspace, project) if run.id == retry).kind is RunKind.FULL


def test_every_second_run_is_full_with_full_retrain_every_two(workspace: Workspace) -> None:
    project = _project(workspace, policy=POLICY.model_copy(update={"full_retrain_every": 2}))
    seeds = iter(range(100))
    kinds = []
    run_id = [_correct(workspace, project, next(seeds)) for _ in range(3)][-1]
    for number in range(1, 4):
        kinds.append(next(r.kind for r in _runs(workspace, project) if r.id == run_id))
        _complete(workspace, run_id)
        _serve_model(workspace, project, run_id, number)
        run_id = [_correct(workspace, project, next(seeds)) for _ in range(2)][-1]
    kinds.append(next(r.kind for r in _runs(workspace, project) if r.id == run_id))

    assert kinds == [RunKind.FULL, RunKind.INCREMENTAL, RunKind.FULL, RunKind.INCREMENTAL]


def test_time_based_trigger_queues_a_run_for_a_single_new_correction(
    workspace: Workspace,
) -> None:
    project = _project(workspace)  # retrain_every_minutes defaults to 60
    first = [_correct(workspace, project, seed) for seed in range(3)][-1]
    _complete(workspace, first)
    _serve_model(workspace, project, first, 1)
    assert _correct(workspace, project, 3) == ""

    _let_time_pass(workspace, project, 59)
    with workspace.sessions() as session:
        early = evaluate_trigger(session, project)
    _let_time_pass(workspace, project, 2)
    with workspace.sessions() as session:
        decision = evaluate_trigger(session, project)
    with transaction(workspace.sessions) as session:
        due = enqueue_due_runs(session)

    assert not early.trigger
    assert decision.trigger
    assert "60 minutes" in decision.reason
    [run] = due
    assert run.project_id == project.id
    assert run.kind is RunKind.INCREMENTAL


def test_enqueue_due_runs_checks_every_project(workspace: Workspace) -> None:
    ready = _project(workspace, "ready")
    waiting = _project(workspace, "waiting")
    for seed in range(3):
        _correct(workspace, ready, seed, enqueue=False)
    _correct(workspace, waiting, 10, enqueue=False)

    with transaction(workspace.sessions) as session:
        due = enqueue_due_runs(session)
    with transaction(workspace.sessions) as session:
        due_again = enqueue_due_runs(session)

    assert [(run.project_id, run.kind) for run in due] == [(ready.id, RunKind.FULL)]
    assert due_again == []
    assert _runs(workspace, waiting) == []
    assert [run.id for run in _runs(workspace, ready)] == [due[0].id]


def test_disabled_policy_queues_nothing(workspace: Workspace) -> None:
    project = _project(workspace, policy=POLICY.model_copy(update={"enabled": False}))

    queued = [_correct(workspace, project, seed) for seed in range(4)]
    with transaction(workspace.sessions) as session:
        due = enqueue_due_runs(session)
        stored = get_project(session, project.id)

    assert queued == ["", "", "", ""]
    assert due == []
    assert stored.training_policy.enabled is False
    with workspace.sessions() as session:
        assert session.scalar(select(func.count()).select_from(JobRow)) == 0


def test_the_policy_is_applied_once_the_correction_has_committed_not_inside_its_write(
    workspace: Workspace,
) -> None:
    """The policy's queries would hold SQLite's one write lock if they ran in the
    correction's transaction; they run after its commit and still queue the run before
    ``record_correction``'s caller gets its answer."""
    project = _project(workspace, policy=TrainingPolicy(first_model_after=1, retrain_after=1))
    image, mask = shapes_sample(0)
    with transaction(workspace.sessions) as session:
        stored = add_image(
            session,
            workspace.blobs,
            project_id=project.id,
            filename="0.png",
            data=png_bytes(image),
            max_pixels=64 * 64,
            actor="test",
        )
    statements: list[str] = []

    def statement(_conn: Any, _cursor: Any, text: str, *_: Any) -> None:
        statements.append(" ".join(text.split()))

    def commit(_conn: Any) -> None:
        statements.append("COMMIT")

    event.listen(workspace.engine, "before_cursor_execute", statement)
    event.listen(workspace.engine, "commit", commit)
    try:
        with transaction(workspace.sessions) as session:
            record_correction(
                session,
                workspace.blobs,
                project=project,
                image=stored,
                mask=mask,
                annotator="ann",
                source="api",
                actor="test",
            )
    finally:
        event.remove(workspace.engine, "before_cursor_execute", statement)
        event.remove(workspace.engine, "commit", commit)

    correction_write = statements[: statements.index("COMMIT")]
    assert any(text.startswith("INSERT INTO corrections") for text in correction_write)
    assert not any(" jobs" in text for text in correction_write), correction_write
    assert any(text.startswith("INSERT INTO jobs") for text in statements)
    [run] = _runs(workspace, project)
    assert run.status is JobStatus.QUEUED and run.trigger is RunTrigger.POLICY
