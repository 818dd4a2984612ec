"""Which onnxruntime session options draft fastest: the measurement behind ``RuntimeOptions``.

Usage::

    python -m bench.runtime_options [--quick] [--out bench/out/runtime_options.json]

Exports the default network (``configs/model.yaml``, untrained decoder: time does not
depend on weight values), then for each variant of ``models.predictor.RuntimeOptions``
(one option changed from the baseline at a time, and I/O binding) times ``session.run``
on a 512² grey image at concurrency 1 (p50) and with 4 callers at once (images/s),
interleaved over 3 rounds (medians reported). Run it alone (under the CPU lock).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bench.environment import stamp, write_result
from models.config import load_network_config
from models.predictor import INPUT_NAME, OUTPUT_NAME, OnnxPredictor, RuntimeOptions, preprocess

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "out" / "runtime_options.json"
BASELINE = RuntimeOptions()
VARIANTS: dict[str, RuntimeOptions] = {
    "onnxruntime defaults (threads auto, all optimisations, spinning)": BASELINE,
    "threads=1": dataclasses.replace(BASELINE, threads=1),
    "threads=2": dataclasses.replace(BASELINE, threads=2),
    "no spinning": dataclasses.replace(BASELINE, spinning=False),
    "graph basic": dataclasses.replace(BASELINE, graph_optimization="basic"),
    "graph extended": dataclasses.replace(BASELINE, graph_optimization="extended"),
    "no memory pattern": dataclasses.replace(BASELINE, memory_pattern=False),
    "no cpu arena": dataclasses.replace(BASELINE, cpu_arena=False),
    "parallel execution": dataclasses.replace(BASELINE, execution_mode="parallel"),
    "threads=1, no spinning": dataclasses.replace(BASELINE, threads=1, spinning=False),
    "no memory pattern, no spinning": dataclasses.replace(
        BASELINE, memory_pattern=False, spinning=False
    ),
    "io binding": BASELINE,
}
CALLERS = 4


def _caller(predictor: OnnxPredictor, side: int, *, io_binding: bool) -> Callable[[], float]:
    """One timed ``session.run`` (or ``run_with_iobinding``, input bound once)."""
    image = np.random.default_rng(0).integers(0, 256, (side, side), dtype=np.uint8)
    batch = preprocess(image, predictor.spec)
    session = predictor.session

    def plain() -> float:
        started = time.perf_counter()
        session.run([OUTPUT_NAME], {INPUT_NAME: batch})
        return time.perf_counter() - started

    def bound() -> float:
        started = time.perf_counter()
        binding = session.io_binding()
        binding.bind_cpu_input(INPUT_NAME, batch)
        binding.bind_output(OUTPUT_NAME, "cpu")
        session.run_with_iobinding(binding)
        binding.copy_outputs_to_cpu()
        return time.perf_counter() - started

    return bound if io_binding else plain


def time_round(run: Callable[[], float], runs: int) -> tuple[float, float]:
    """p50 seconds of one caller, and images/s of ``CALLERS`` callers."""
    run()
    single = float(np.median([run() for _ in range(runs)]))
    started = time.perf_counter()
    with ThreadPoolExecutor(CALLERS) as pool:
        list(pool.map(lambda _: run(), range(runs * 2)))
    return single, runs * 2 / (time.perf_counter() - started)


def sweep(path: Path, side: int, runs: int, rounds: int) -> dict[str, Any]:
    """Every variant, interleaved over ``rounds`` rounds (load drifts hit all alike)."""
    callers = {
        name: _caller(
            OnnxPredictor.from_path(path, runtime=options), side, io_binding=name == "io binding"
        )
        for name, options in VARIANTS.items()
    }
    single: dict[str, list[float]] = {name: [] for name in callers}
    rate: dict[str, list[float]] = {name: [] for name in callers}
    for _ in range(rounds):
        for name, run in callers.items():
            p50, per_s = time_round(run, runs)
            single[name].append(p50)
            rate[name].append(per_s)
    return {
        name: {
            "options": dataclasses.asdict(VARIANTS[name]),
            "p50_ms": round(float(np.median(single[name])) * 1e3, 2),
            "p50_ms_rounds": [round(s * 1e3, 1) for s in single[name]],
            f"images_per_s_{CALLERS}_callers": round(float(np.median(rate[name])), 2),
        }
        for name in callers
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sweep and write its JSON report."""
    import torch

    from models.builder import build_network
    from models.onnx_export import export_onnx

    parser = argparse.ArgumentParser(prog="python -m bench.runtime_options", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few runs at 128²: a smoke test")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON report path")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    side, runs, rounds = (128, 2, 1) if args.quick else (512, 8, 3)
    config = load_network_config(REPO / "configs" / "model.yaml")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        export_onnx(build_network(config).eval(), path, config=config)
        results = sweep(path, side, runs, rounds)
    report = {
        "benchmark": "runtime_options",
        **stamp(),
        "quick": args.quick,
        "ran_alone": "under the shared CPU lock (flock /tmp/prelabel-cpu.lock)",
        "input": f"{side}x{side} grey, batch 1, session.run only",
        "results": results,
    }
    write_result(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
