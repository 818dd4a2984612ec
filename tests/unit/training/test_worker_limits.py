"""The worker is a good neighbour of the service: lower CPU priority, bounded threads."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

from prelabel.settings import WorkerSettings
from training.worker import apply_worker_limits, usable_cores


def _limits_in_child(settings: WorkerSettings, answers: multiprocessing.Queue[object]) -> None:
    import torch

    apply_worker_limits(settings)
    answers.put((os.getpriority(os.PRIO_PROCESS, 0), torch.get_num_threads()))


def _in_spawned_process(settings: WorkerSettings) -> tuple[int, int]:
    context = multiprocessing.get_context("spawn")
    answers: multiprocessing.Queue[object] = context.Queue()
    child = context.Process(target=_limits_in_child, args=(settings, answers))
    child.start()
    answer = answers.get(timeout=120)
    child.join(timeout=60)
    assert child.exitcode == 0
    nice, threads = answer  # type: ignore[misc]
    return int(nice), int(threads)


def test_settings_set_niceness_and_torch_threads_of_a_spawned_worker() -> None:
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    nice, threads = _in_spawned_process(WorkerSettings(nice=ours + 3, torch_threads=1))
    assert (nice, threads) == (ours + 3, 1)


def test_defaults_leave_a_core_to_the_service() -> None:
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    nice, threads = _in_spawned_process(WorkerSettings())
    assert nice == max(ours, 19)
    assert threads == max(1, usable_cores() - 1)


def _niceness_of_threads(pid: int) -> set[int]:
    """The niceness of every thread of ``pid`` (Linux keeps one per thread)."""
    found = set()
    for thread in os.listdir(f"/proc/{pid}/task"):
        try:
            found.add(os.getpriority(os.PRIO_PROCESS, int(thread)))
        except ProcessLookupError:
            continue
    return found


def test_the_worker_command_runs_every_thread_at_the_configured_niceness(
    tmp_path: Path,
) -> None:
    """Including the threads numpy's OpenBLAS and onnxruntime start when imported, before
    the command lowers its priority."""
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    wanted = min(19, ours + 5)
    env = {**os.environ, "PRELABEL_HOME": str(tmp_path / "home"), "PRELABEL_NICE": str(wanted)}
    env.pop("PRELABEL_DATABASE_URL", None)
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "prelabel.cli", "worker"], env=env, stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + 120
        main_thread = ours
        while time.monotonic() < deadline and worker.poll() is None:
            main_thread = os.getpriority(os.PRIO_PROCESS, worker.pid)
            if main_thread == wanted:
                break
            time.sleep(0.2)
        assert main_thread == wanted, (tmp_path / "worker.log").read_text()
        time.sleep(0.5)  # the call that raised the main thread raises the others next
        seen = _niceness_of_threads(worker.pid)
        assert len(os.listdir(f"/proc/{worker.pid}/task")) > 1  # imports started threads
        assert seen == {wanted}, (tmp_path / "worker.log").read_text()
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        log.close()
