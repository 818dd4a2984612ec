"""The training queue: coalescing enqueue, atomic claims, one run per project, stale recovery."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select

from prelabel.database import make_session_factory, transaction
from prelabel.errors import ConflictError, TrainingRunNotFound
from prelabel.jobs import (
    Job,
    JobStatus,
    RunKind,
    RunTrigger,
    claim_job,
    claim_next_job,
    enqueue_training,
    finish_job,
    get_training_run,
    heartbeat,
    list_training_runs,
    recover_stale_jobs,
    update_progress,
)
from prelabel.projects import ProjectSpec, create_project
from prelabel.tables import JobRow, utcnow
from prelabel.workspace import Workspace
from tests.synthetic import SHAPES_CLASSES


def _synchronous_off(dbapi_connection: Any, _record: object) -> None:
    dbapi_connection.execute("PRAGMA synchronous=OFF")


@pytest.fixture(autouse=True)
def _fast_disk(workspace: Workspace) -> None:
    """Durability is not under test here: no fsync keeps the module fast on a busy disk."""
    if workspace.engine.dialect.name != "sqlite":
        return  # the PostgreSQL test server runs with fsync off already
    event.listen(workspace.engine, "connect", _synchronous_off)
    workspace.engine.dispose()


def _project(workspace: Workspace, name: str = "shapes") -> str:
    spec = ProjectSpec.model_validate({"name": name, "classes": SHAPES_CLASSES})
    with transaction(workspace.sessions) as session:
        return create_project(session, spec, actor="test").id


def _enqueue(
    workspace: Workspace,
    project_id: str,
    kind: RunKind = RunKind.INCREMENTAL,
    trigger: RunTrigger = RunTrigger.MANUAL,
) -> Job:
    with transaction(workspace.sessions) as session:
        return enqueue_training(session, project_id, trigger=trigger, kind=kind, actor="test")


def _run(workspace: Workspace, run_id: str) -> JobRow:
    with workspace.sessions() as session:
        row = session.get(JobRow, run_id)
        assert row is not None
        return row


def _runs(workspace: Workspace, project_id: str) -> list[Job]:
    with workspace.sessions() as session:
        return list_training_runs(session, project_id)


@contextmanager
def _on_first_write(engine: Engine, action: Callable[[], object]) -> Iterator[None]:
    """Run ``action`` just before the next INSERT/UPDATE/DELETE that this thread sends."""
    thread, fired = threading.get_ident(), []

    def hook(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if fired or threading.get_ident() != thread:
            return
        if statement.lstrip().split(None, 1)[0].upper() in {"INSERT", "UPDATE", "DELETE"}:
            fired.append(True)
            action()

    event.listen(engine, "before_cursor_execute", hook)
    try:
        yield
    finally:
        event.remove(engine, "before_cursor_execute", hook)


def _age_heartbeat(workspace: Workspace, run_id: str, seconds: float) -> None:
    with transaction(workspace.sessions) as session:
        row = session.get(JobRow, run_id)
        assert row is not None
        row.heartbeat_at = utcnow() - timedelta(seconds=seconds)


# --- enqueue ----------------------------------------------------------------


def test_enqueue_while_queued_returns_the_queued_run(workspace: Workspace) -> None:
    project_id = _project(workspace)

    first = _enqueue(workspace, project_id, trigger=RunTrigger.POLICY)
    second = _enqueue(workspace, project_id, trigger=RunTrigger.MANUAL)

    assert second.id == first.id
    assert first.status is JobStatus.QUEUED
    assert first.attempts == 0
    assert [run.id for run in _runs(workspace, project_id)] == [first.id]


def test_enqueue_upgrades_a_queued_run_to_full_and_never_downgrades(workspace: Workspace) -> None:
    project_id = _project(workspace)
    queued = _enqueue(workspace, project_id, kind=RunKind.INCREMENTAL)

    upgraded = _enqueue(workspace, project_id, kind=RunKind.FULL)
    again = _enqueue(workspace, project_id, kind=RunKind.INCREMENTAL)

    assert upgraded.id == again.id == queued.id
    assert upgraded.kind is RunKind.FULL
    assert again.kind is RunKind.FULL
    assert _run(workspace, queued.id).kind == RunKind.FULL


def test_one_follow_up_is_queued_while_a_run_runs(workspace: Workspace) -> None:
    project_id = _project(workspace)
    running = _enqueue(workspace, project_id)
    claim_job(workspace.sessions, running.id, "w1")

    follow_up = _enqueue(workspace, project_id)
    third = _enqueue(workspace, project_id)

    assert follow_up.id != running.id
    assert follow_up.status is JobStatus.QUEUED
    assert third.id == follow_up.id
    statuses = {run.id: run.status for run in _runs(workspace, project_id)}
    assert statuses == {running.id: JobStatus.RUNNING, follow_up.id: JobStatus.QUEUED}


def test_concurrent_enqueues_coalesce_into_one_run(workspace: Workspace) -> None:
    project_id = _project(workspace)
    first_session = workspace.sessions()
    second_session = workspace.sessions()
    first_session.begin()
    first = enqueue_training(
        first_session, project_id, trigger=RunTrigger.POLICY, kind=RunKind.FULL, actor="test"
    )

    # The first request commits while the second is between looking and writing.
    try:
        with _on_first_write(workspace.engine, first_session.commit), second_session.begin():
            second = enqueue_training(
                second_session,
                project_id,
                trigger=RunTrigger.POLICY,
                kind=RunKind.FULL,
                actor="test",
            )
    finally:
        first_session.close()
        second_session.close()

    queued = [run for run in _runs(workspace, project_id) if run.status is JobStatus.QUEUED]
    assert len(queued) == 1
    assert second.id == first.id


# --- claims -----------------------------------------------------------------


def test_claim_next_run_takes_the_oldest_queued_run_first(workspace: Workspace) -> None:
    projects = [_project(workspace, name) for name in ("zeta", "alpha", "mid")]
    queued = [_enqueue(workspace, project_id).id for project_id in projects]

    claimed = [claim_next_job(workspace.sessions, f"w{i}") for i in range(4)]

    assert [run.id if run else None for run in claimed] == [*queued, None]
    first = claimed[0]
    assert first is not None
    assert first.status is JobStatus.RUNNING
    assert first.worker == "w0"
    assert first.attempts == 1
    assert first.started_at is not None


def test_claim_next_run_skips_a_project_that_has_a_run_running(workspace: Workspace) -> None:
    busy, other = _project(workspace, "busy"), _project(workspace, "other")
    running = _enqueue(workspace, busy)
    claim_job(workspace.sessions, running.id, "w1")
    follow_up = _enqueue(workspace, busy)  # older than the other project's run
    other_run = _enqueue(workspace, other)

    second = claim_next_job(workspace.sessions, "w2")
    third = claim_next_job(workspace.sessions, "w3")
    with transaction(workspace.sessions) as session:
        finish_job(session, running.id, status=JobStatus.SUCCEEDED)
    fourth = claim_next_job(workspace.sessions, "w4")

    assert second is not None and second.id == other_run.id
    assert third is None
    assert fourth is not None and fourth.id == follow_up.id


def test_claim_next_run_on_an_empty_queue_returns_none(workspace: Workspace) -> None:
    _project(workspace)

    assert claim_next_job(workspace.sessions, "w1") is None


def test_a_failure_whose_words_hold_nul_is_recorded_with_the_nul_written_out(
    workspace: Workspace,
) -> None:
    # The database refuses raw NUL; a job's failure must be recorded whatever it quotes.
    run = _enqueue(workspace, _project(workspace))
    claim_job(workspace.sessions, run.id, "worker")
    with transaction(workspace.sessions) as session:
        finish_job(session, run.id, status=JobStatus.FAILED, error="cannot read 'a\x00b.png'")

    row = _run(workspace, run.id)
    assert row.status == JobStatus.FAILED
    assert row.error == "cannot read 'a\\x00b.png'"


@pytest.mark.parametrize("status", [JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.FAILED])
def test_claim_run_of_a_run_that_is_not_queued_conflicts(
    workspace: Workspace, status: JobStatus
) -> None:
    run = _enqueue(workspace, _project(workspace))
    claim_job(workspace.sessions, run.id, "first")
    if status is not JobStatus.RUNNING:
        with transaction(workspace.sessions) as session:
            finish_job(session, run.id, status=status)

    with pytest.raises(ConflictError, match=run.id):
        claim_job(workspace.sessions, run.id, "second")

    row = _run(workspace, run.id)
    assert row.status == status
    assert row.worker == "first"
    assert row.attempts == 1


def test_claim_run_of_an_unknown_run_conflicts(workspace: Workspace) -> None:
    with pytest.raises(ConflictError):
        claim_job(workspace.sessions, "0" * 32, "w1")


def test_two_sessions_claiming_one_run_only_one_wins(workspace: Workspace) -> None:
    run = _enqueue(workspace, _project(workspace))
    other_factory = make_session_factory(workspace.engine)

    won = claim_job(workspace.sessions, run.id, "w1")
    with pytest.raises(ConflictError):
        claim_job(other_factory, run.id, "w2")

    assert won.worker == "w1"
    assert _run(workspace, run.id).worker == "w1"


def test_racing_threads_claim_one_run_exactly_once(workspace: Workspace) -> None:
    run = _enqueue(workspace, _project(workspace))
    workers = 4
    barrier = threading.Barrier(workers)
    outcomes: list[str] = []
    lock = threading.Lock()

    def race(worker: str) -> None:
        barrier.wait()
        try:
            claim_job(workspace.sessions, run.id, worker)
            outcome = "won"
        except ConflictError:
            outcome = "lost"
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=race, args=(f"w{i}",)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)

    assert sorted(outcomes) == ["lost"] * (workers - 1) + ["won"]
    assert _run(workspace, run.id).attempts == 1


def test_concurrent_workers_never_run_two_runs_of_one_project(workspace: Workspace) -> None:
    # Two queued runs of one project: what test_concurrent_enqueues_coalesce_into_one_run shows
    # concurrent enqueues leave behind.
    project_id = _project(workspace)
    with transaction(workspace.sessions) as session:
        for _ in range(2):
            session.add(JobRow(project_id=project_id))
            session.flush()
    fast = threading.Thread(target=claim_next_job, args=(workspace.sessions, "fast"))

    def fast_worker_claims() -> None:
        fast.start()
        fast.join(timeout=2)  # a claim that locks before it looks makes "fast" wait instead

    # The fast worker claims after the slow one chose its candidates, before it writes.
    with _on_first_write(workspace.engine, fast_worker_claims):
        claim_next_job(workspace.sessions, "slow")
    fast.join(timeout=30)

    running = [run for run in _runs(workspace, project_id) if run.status is JobStatus.RUNNING]
    assert len(running) == 1


def test_workers_polling_together_claim_every_job_exactly_once(workspace: Workspace) -> None:
    # Train and drafts jobs of several projects; four workers drain the queue together.
    projects = [_project(workspace, f"p{i}") for i in range(5)]
    with transaction(workspace.sessions) as session:
        for project_id in projects:
            for task in ("train", "drafts"):
                session.add(JobRow(project_id=project_id, task=task))
                session.flush()
        queued = set(session.scalars(select(JobRow.id)))
    claimed: list[str] = []
    overlaps: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(4)

    def worker(name: str) -> None:
        barrier.wait()
        while (job := claim_next_job(workspace.sessions, name)) is not None:
            with workspace.sessions() as session:
                running = session.scalar(
                    select(func.count()).where(
                        JobRow.project_id == job.project_id, JobRow.status == JobStatus.RUNNING
                    )
                )
            with lock:
                claimed.append(job.id)
                if running != 1:
                    overlaps.append(job.project_id)
            with transaction(workspace.sessions) as session:
                finish_job(session, job.id, status=JobStatus.SUCCEEDED)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert sorted(claimed) == sorted(queued)
    assert overlaps == []


# --- progress, heartbeat, finish ----------------------------------------------


def test_finish_run_stores_the_outcome(workspace: Workspace) -> None:
    project_id = _project(workspace)
    run = _enqueue(workspace, project_id)
    claim_job(workspace.sessions, run.id, "w1")

    with transaction(workspace.sessions) as session:
        finish_job(
            session,
            run.id,
            status=JobStatus.SUCCEEDED,
            model_version="v0003",
            decision="promoted: better",
            candidate_miou=0.71,
            serving_miou=0.64,
            train_s=12.5,
        )

    with workspace.sessions() as session:
        done = get_training_run(session, project_id, run.id)
    assert done.status is JobStatus.SUCCEEDED
    assert done.model_version == "v0003"
    assert done.decision == "promoted: better"
    assert done.error is None
    assert done.candidate_miou == pytest.approx(0.71)
    assert done.serving_miou == pytest.approx(0.64)
    assert done.train_s == pytest.approx(12.5)
    assert done.started_at is not None and done.finished_at is not None
    assert done.finished_at >= done.started_at


def test_get_run_of_another_project_is_not_found(workspace: Workspace) -> None:
    run = _enqueue(workspace, _project(workspace, "one"))
    other = _project(workspace, "two")

    with workspace.sessions() as session, pytest.raises(TrainingRunNotFound):
        get_training_run(session, other, run.id)


def test_heartbeat_and_progress_keep_a_run_from_going_stale(workspace: Workspace) -> None:
    project_id = _project(workspace)
    beating, progressing = (
        _enqueue(workspace, project_id),
        _enqueue(workspace, _project(workspace, "b")),
    )
    for run in (beating, progressing):
        claim_job(workspace.sessions, run.id, "remote")
        _age_heartbeat(workspace, run.id, 3600)

    with transaction(workspace.sessions) as session:
        heartbeat(session, beating.id)
        update_progress(session, progressing.id, {"epoch": 2, "loss": 0.25})
    with transaction(workspace.sessions) as session:
        retries = recover_stale_jobs(session, stale_after_s=60, worker_alive=lambda _: None)

    assert retries == []
    assert _run(workspace, beating.id).status == JobStatus.RUNNING
    assert _run(workspace, progressing.id).status == JobStatus.RUNNING
    assert _run(workspace, progressing.id).progress == {"epoch": 2, "loss": 0.25}


# --- recover_stale_jobs -------------------------------------------------------


def test_run_of_a_dead_worker_fails_and_is_retried(workspace: Workspace) -> None:
    project_id = _project(workspace)
    run = _enqueue(workspace, project_id, kind=RunKind.FULL, trigger=RunTrigger.POLICY)
    claim_job(workspace.sessions, run.id, "host-1:4242")
    asked: list[str] = []

    def worker_alive(worker: str) -> bool | None:
        asked.append(worker)
        return False

    with transaction(workspace.sessions) as session:
        retries = recover_stale_jobs(session, stale_after_s=3600, worker_alive=worker_alive)

    assert asked == ["host-1:4242"]
    failed = _run(workspace, run.id)
    assert failed.status == JobStatus.FAILED
    assert failed.error is not None and "host-1:4242" in failed.error
    assert failed.finished_at is not None
    [retry] = retries
    assert retry.status is JobStatus.QUEUED
    assert retry.retry_of == run.id
    assert retry.kind is RunKind.FULL
    assert retry.trigger is RunTrigger.POLICY
    assert retry.attempts == 1
    assert {r.id for r in _runs(workspace, project_id)} == {run.id, retry.id}


def test_run_with_a_fresh_heartbeat_and_unknown_worker_is_left_alone(
    workspace: Workspace,
) -> None:
    project_id = _project(workspace)
    run = _enqueue(workspace, project_id)
    claim_job(workspace.sessions, run.id, "remote")

    with transaction(workspace.sessions) as session:
        retries = recover_stale_jobs(session, stale_after_s=60, worker_alive=lambda _: None)

    assert retries == []
    assert _run(workspace, run.id).status == JobStatus.RUNNING
    assert len(_runs(workspace, project_id)) == 1


def test_run_with_an_old_heartbeat_and_unknown_worker_is_recovered(workspace: Workspace) -> None:
    project_id = _project(workspace)
    run = _enqueue(workspace, project_id)
    claim_job(workspace.sessions, run.id, "remote")
    _age_heartbeat(workspace, run.id, 600)

    with transaction(workspace.sessions) as session:
        retries = recover_stale_jobs(session, stale_after_s=60, worker_alive=lambda _: None)

    failed = _run(workspace, run.id)
    assert failed.status == JobStatus.FAILED
    assert failed.error is not None and "remote" in failed.error
    assert [retry.retry_of for retry in retries] == [run.id]


def test_a_live_worker_keeps_its_run_whatever_the_heartbeat(workspace: Workspace) -> None:
    run = _enqueue(workspace, _project(workspace))
    claim_job(workspace.sessions, run.id, "local")
    _age_heartbeat(workspace, run.id, 86400)

    with transaction(workspace.sessions) as session:
        retries = recover_stale_jobs(session, stale_after_s=60, worker_alive=lambda _: True)

    assert retries == []
    assert _run(workspace, run.id).status == JobStatus.RUNNING


def test_queued_and_finished_runs_are_not_recovered(workspace: Workspace) -> None:
    done = _enqueue(workspace, _project(workspace, "done"))
    claim_job(workspace.sessions, done.id, "w")
    with transaction(workspace.sessions) as session:
        finish_job(session, done.id, status=JobStatus.SUCCEEDED)
    queued = _enqueue(workspace, _project(workspace, "queued"))

    with transaction(workspace.sessions) as session:
        retries = recover_stale_jobs(session, stale_after_s=0, worker_alive=lambda _: False)

    assert retries == []
    assert _run(workspace, done.id).status == JobStatus.SUCCEEDED
    assert _run(workspace, queued.id).status == JobStatus.QUEUED


def test_retries_stop_at_max_attempts(workspace: Workspace) -> None:
    project_id = _project(workspace)
    first = _enqueue(workspace, project_id)
    claim_job(workspace.sessions, first.id, "w1")
    with transaction(workspace.sessions) as session:
        [retry] = recover_stale_jobs(
            session, stale_after_s=60, worker_alive=lambda _: False, max_attempts=2
        )
    second = claim_job(workspace.sessions, retry.id, "w2")

    with transaction(workspace.sessions) as session:
        again = recover_stale_jobs(
            session, stale_after_s=60, worker_alive=lambda _: False, max_attempts=2
        )

    assert second.attempts == 2
    assert again == []
    runs = _runs(workspace, project_id)
    assert {run.id for run in runs} == {first.id, retry.id}
    assert all(run.status is JobStatus.FAILED for run in runs)


def test_no_retry_when_the_project_already_has_a_queued_run(workspace: Workspace) -> None:
    project_id = _project(workspace)
    running = _enqueue(workspace, project_id)
    claim_job(workspace.sessions, running.id, "w1")
    follow_up = _enqueue(workspace, project_id)

    with transaction(workspace.sessions) as session:
        retries = recover_stale_jobs(session, stale_after_s=60, worker_alive=lambda _: False)

    assert retries == []
    assert _run(workspace, running.id).status == JobStatus.FAILED
    with workspace.sessions() as session:
        queued = session.scalar(
            select(func.count()).where(
                JobRow.project_id == project_id,
                JobRow.status == JobStatus.QUEUED,
            )
        )
    assert queued == 1
    assert _run(workspace, follow_up.id).retry_of is None
