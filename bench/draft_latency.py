"""Draft latency of the default network: OnnxPredictor vs torch eager, same run.

Usage::

    python -m bench.draft_latency [--quick] [--out bench/out/draft_latency.json]

Builds the network of ``configs/model.yaml`` with untrained weights (latency does
not depend on weight values), exports it to ONNX in a temporary folder, then
times, at 256x256 and 512x512 grey images:

* ``predict``: ``OnnxPredictor.predict`` end to end (preprocess, run, softmax, argmax);
* ``onnx_run``: the onnxruntime session alone on the padded input;
* ``torch_eager``: the torch network on the same input, under ``inference_mode``.

``ratio_onnx_to_torch`` = p50 ``onnx_run`` / p50 ``torch_eager`` (below 1: onnxruntime
is faster). Writes JSON to ``--out``, logs its path, and echoes it to stdout.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.environment import stamp, write_result
from models.artifacts import sha256_file
from models.config import NetworkConfig, load_network_config
from models.predictor import INPUT_NAME, OUTPUT_NAME, OnnxPredictor, preprocess

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "model.yaml"
DEFAULT_OUT = REPO / "bench" / "out" / "draft_latency.json"
SIZES_PX = (256, 512)


def time_calls(call: Callable[[], object], *, warmup: int, runs: int) -> dict[str, float]:
    """Call ``call`` ``warmup`` times untimed, then ``runs`` times timed.

    Returns:
        p50_ms, p95_ms, mean_ms and throughput per second (1 / mean).
    """
    for _ in range(warmup):
        call()
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    times = np.asarray(seconds)
    return {
        "p50_ms": round(float(np.percentile(times, 50)) * 1e3, 3),
        "p95_ms": round(float(np.percentile(times, 95)) * 1e3, 3),
        "mean_ms": round(float(times.mean()) * 1e3, 3),
        "throughput_per_s": round(1.0 / float(times.mean()), 2),
        "runs": runs,
    }


def measure(config: NetworkConfig, *, quick: bool, threads: int) -> dict[str, Any]:
    """Export the untrained default network and time both runtimes at each size."""
    import torch

    from models.builder import build_network
    from models.onnx_export import export_onnx

    warmup, runs = (1, 5) if quick else (3, 30)
    torch.manual_seed(0)
    net = build_network(config).eval()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        onnx_path = Path(folder) / "draft.onnx"
        export_onnx(net, onnx_path, config=config, sample_hw=(256, 256))
        predictor = OnnxPredictor.from_path(onnx_path, threads=threads)
        results["onnx_sha256"] = sha256_file(onnx_path)
        results["onnx_bytes"] = onnx_path.stat().st_size
        rng = np.random.default_rng(0)
        for size in SIZES_PX:
            image = rng.integers(0, 256, (size, size), dtype=np.uint8)
            batch = preprocess(image, predictor.spec)
            tensor = torch.from_numpy(batch)

            def run_torch(tensor: torch.Tensor = tensor) -> object:
                with torch.inference_mode():
                    return net(tensor)

            def run_onnx(batch: np.ndarray = batch) -> object:
                return predictor.session.run([OUTPUT_NAME], {INPUT_NAME: batch})

            def run_predict(image: np.ndarray = image) -> object:
                return predictor.predict(image)

            timings = {
                "predict": time_calls(run_predict, warmup=warmup, runs=runs),
                "onnx_run": time_calls(run_onnx, warmup=warmup, runs=runs),
                "torch_eager": time_calls(run_torch, warmup=warmup, runs=runs),
            }
            ratio = timings["onnx_run"]["p50_ms"] / timings["torch_eager"]["p50_ms"]
            row: dict[str, Any] = {**timings, "ratio_onnx_to_torch": round(ratio, 3)}
            results[f"{size}x{size}"] = row
            logger.info(
                "%dx%d: predict p50 %.1f ms, onnx %.1f ms, torch %.1f ms",
                size,
                size,
                row["predict"]["p50_ms"],
                row["onnx_run"]["p50_ms"],
                row["torch_eager"]["p50_ms"],
            )
    results["torch_threads"] = torch.get_num_threads()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write its JSON report."""
    parser = argparse.ArgumentParser(prog="python -m bench.draft_latency", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few runs: a smoke test for CI")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON report path")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="network YAML")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: auto)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    config = load_network_config(args.config)
    report = {
        "benchmark": "draft_latency",
        **stamp(),
        "quick": args.quick,
        "model_version": f"untrained {config.arch}/{config.encoder} from {args.config.name}",
        "note": "untrained weights: latency does not depend on weight values",
        "network": config.model_dump(mode="json"),
        "input": "grey uint8 image, batch 1; predict includes preprocess and postprocess",
        "onnxruntime_threads": args.threads,
        "results": measure(config, quick=args.quick, threads=args.threads),
    }
    write_result(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
