"""How much a training neighbour slows the service's requests, per way of keeping it back.

Usage::

    python -m bench.neighbour [--quick] [--out bench/out/neighbour.json]

Two processes stand in for the service: each does a short CPU task (a few small matrix
products on one thread and a Python loop, about 5 ms alone) and then sleeps 40-58 ms, like
a service process answering requests. Beside them, a one-thread torch training loop (a small
convolutional network on batches of 4 RGB 128² crops) runs in one of three ways: not at
all (``alone``), at niceness 19 (``nice``, as the worker trains), or in the ``SCHED_IDLE``
scheduling class (``sched_idle``, the weakest there is). Reported per way, interleaved
over rounds: the task's latency p50/p95/p99 and the training steps per second. Linux
only; run it alone (under the CPU lock).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import time
from collections.abc import Sequence
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from bench.environment import stamp, write_result

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "out" / "neighbour.json"
WAYS = ("alone", "nice", "sched_idle")
SERVICE_PROCESSES = 2
READY_TIMEOUT_S = 120.0


def _train(way: str, steps: Synchronized[int]) -> None:
    """The neighbour: train a small network on one thread until killed, counting steps."""
    import torch

    if way == "nice":
        os.setpriority(os.PRIO_PROCESS, 0, 19)
    elif way == "sched_idle":
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    torch.set_num_threads(1)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(32, 3, 3, padding=1)
    )
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    batch = torch.randn(4, 3, 128, 128)
    while True:
        optimizer.zero_grad()
        net(batch).pow(2).mean().backward()
        optimizer.step()
        with steps.get_lock():
            steps.value += 1


def _serve(tasks: int, out: multiprocessing.Queue[list[float]]) -> None:
    """One stand-in service process: ``tasks`` timed CPU tasks with pauses between them.

    BLAS computes on one thread, as a service process runs Python on one core (and
    multi-threaded BLAS spinning in two processes would measure itself).
    """
    matrix = np.random.default_rng(0).random((200, 200))
    latencies = []
    with threadpool_limits(limits=1):
        for index in range(tasks):
            started = time.perf_counter()
            for _ in range(3):
                matrix @ matrix
            total = 0
            for value in range(60_000):
                total += value
            latencies.append((time.perf_counter() - started) * 1000)
            time.sleep(0.04 + (index % 7) * 0.003)
    out.put(latencies)


def measure(way: str, tasks: int) -> dict[str, Any]:
    """The tasks' latency and the neighbour's training speed for one way."""
    context = multiprocessing.get_context("spawn")
    steps = context.Value("q", 0)
    trainer = None
    if way != "alone":
        trainer = context.Process(target=_train, args=(way, steps), daemon=True)
        trainer.start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while steps.value == 0:  # imports done, training under way
            if not trainer.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the {way} neighbour did not start training")
            time.sleep(0.1)
    results: multiprocessing.Queue[list[float]] = context.Queue()
    servers = [
        context.Process(target=_serve, args=(tasks, results)) for _ in range(SERVICE_PROCESSES)
    ]
    steps_before, started = steps.value, time.perf_counter()
    for server in servers:
        server.start()
    latencies = [value for _ in servers for value in results.get()]
    for server in servers:
        server.join()
    elapsed = time.perf_counter() - started
    trained = steps.value - steps_before
    if trainer is not None:
        trainer.kill()
        trainer.join()
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
    return {
        "task_p50_ms": round(float(p50), 2),
        "task_p95_ms": round(float(p95), 2),
        "task_p99_ms": round(float(p99), 2),
        "training_steps_per_s": round(trained / elapsed, 2) if trainer else None,
    }


def run(rounds: int, tasks: int) -> dict[str, list[dict[str, Any]]]:
    """Every way once per round, interleaved."""
    results: dict[str, list[dict[str, Any]]] = {way: [] for way in WAYS}
    for round_index in range(rounds):
        for way in WAYS:
            results[way].append(measure(way, tasks))
            logger.info("round %d %s: %s", round_index + 1, way, results[way][-1])
    return results


def markdown(results: dict[str, list[dict[str, Any]]]) -> str:
    """A table: per way, each round's task p50/p95/p99 and training steps/s."""
    lines = [
        "| neighbour | task p50 / p95 / p99 ms, per round | training steps/s, per round |",
        "| --- | --- | --- |",
    ]
    for way, rounds in results.items():
        latency = "; ".join(
            f"{r['task_p50_ms']} / {r['task_p95_ms']} / {r['task_p99_ms']}" for r in rounds
        )
        speed = "; ".join(str(r["training_steps_per_s"]) for r in rounds)
        lines.append(f"| {way} | {latency} | {speed if way != 'alone' else '-'} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write its JSON and table."""
    parser = argparse.ArgumentParser(prog="python -m bench.neighbour", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1 round of 30 tasks per process")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    rounds, tasks = (1, 30) if args.quick else (3, 300)
    results = run(rounds, tasks)
    write_result(
        {
            "benchmark": "neighbour",
            **stamp(),
            "quick": args.quick,
            "rounds": rounds,
            "tasks_per_process": tasks,
            "service_processes": SERVICE_PROCESSES,
            "ran_alone": "under the shared CPU lock (flock /tmp/prelabel-cpu.lock): no other "
            "benchmark or test on the machine",
            "results": results,
        },
        args.out,
    )
    args.out.with_suffix(".md").write_text(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
