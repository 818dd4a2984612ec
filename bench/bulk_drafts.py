"""Bulk pre-labeling throughput: a bulk drafts job against raw onnxruntime on the same images.

Exports the untrained default network (``configs/model.yaml``), stores N grey images
in a fresh workspace (SQLite + local blobs in a temporary folder), serves the network
as v1 and runs the queued drafts job the way the worker does (``models.bulk``): read
and decode each image, predict, store mask and confidence PNGs, record progress and
claims in the database. The reference is ``session.run`` alone on the same images,
already decoded and preprocessed. Reports images/s of both and their ratio.

Run alone (``flock /tmp/prelabel-cpu.lock python -m bench.bulk_drafts``).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.environment import stamp, write_result
from models.bulk import run_bulk_job
from models.config import load_network_config
from models.predictor import INPUT_NAME, OUTPUT_NAME, OnnxPredictor, preprocess
from models.registry import NewModelVersion, promote, register_version
from models.serving import load_predictor
from prelabel.codecs import encode_image_png
from prelabel.database import transaction
from prelabel.images import add_image
from prelabel.jobs import claim_next_job
from prelabel.projects import ProjectSpec, create_project
from prelabel.settings import StorageSettings
from prelabel.workspace import open_workspace

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "configs" / "model.yaml"
DEFAULT_OUT = REPO / "bench" / "out" / "bulk_drafts.json"


def _export(folder: Path) -> bytes:
    import torch

    from models.builder import build_network
    from models.onnx_export import export_onnx

    config = load_network_config(DEFAULT_CONFIG)
    torch.manual_seed(0)
    path = folder / "draft.onnx"
    export_onnx(build_network(config).eval(), path, config=config, sample_hw=(256, 256))
    return path.read_bytes()


def _images(count: int, size: int) -> list[npt.NDArray[np.uint8]]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (size, size), dtype=np.uint8) for _ in range(count)]


def measure(count: int, size: int, threads: int) -> dict[str, Any]:
    """Raw ``session.run`` images/s, then the bulk job's, on the same images."""
    with tempfile.TemporaryDirectory() as folder:
        onnx = _export(Path(folder))
        images = _images(count, size)
        raw = OnnxPredictor.from_bytes(onnx, threads=threads)
        batches = [preprocess(image, raw.spec) for image in images]
        raw.session.run([OUTPUT_NAME], {INPUT_NAME: batches[0]})  # warm-up
        started = time.perf_counter()
        for batch in batches:
            raw.session.run([OUTPUT_NAME], {INPUT_NAME: batch})
        raw_s = time.perf_counter() - started

        workspace = open_workspace(StorageSettings(home=Path(folder) / "home"))
        classes = [{"id": i, "name": f"c{i}", "color": f"#0000{i:02x}"} for i in range(3)]
        with transaction(workspace.sessions) as session:
            spec = ProjectSpec.model_validate({"name": "bench", "classes": classes})
            project = create_project(session, spec, actor="bench")
            for i, image in enumerate(images):
                add_image(
                    session,
                    workspace.blobs,
                    project_id=project.id,
                    filename=f"{i}.png",
                    data=encode_image_png(image),
                    max_pixels=size * size,
                    actor="bench",
                )
            key = "bench/draft.onnx"
            workspace.blobs.put(key, onnx)
            digest = hashlib.sha256(onnx).hexdigest()
            new = NewModelVersion(
                project_id=project.id,
                parent_version=None,
                onnx_key=key,
                onnx_sha256=digest,
                checkpoint_key=key,
                checkpoint_sha256=digest,
                config={},
                metrics={},
                trained_on=[],
                held_out=[],
            )
            promote(session, project.id, register_version(session, new).version, reason="bench")
        job = claim_next_job(workspace.sessions, "bench")  # the promotion queued it
        if job is None:
            raise RuntimeError("the promotion queued no drafts job")
        started = time.perf_counter()
        status = run_bulk_job(
            workspace,
            job,
            lambda record: load_predictor(workspace.blobs, record, threads=threads),
        )
        bulk_s = time.perf_counter() - started
        workspace.engine.dispose()
    return {
        "images": count,
        "size_px": size,
        "status": str(status),
        "raw_onnxruntime_images_per_s": round(count / raw_s, 3),
        "bulk_job_images_per_s": round(count / bulk_s, 3),
        "raw_over_bulk": round(bulk_s / raw_s, 3),
        "bulk_includes": "model load + checksum, image read/decode, predict, mask and "
        "confidence PNGs, progress/claims in SQLite",
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write its JSON report."""
    parser = argparse.ArgumentParser(prog="python -m bench.bulk_drafts", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few small images: a smoke test")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: auto)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON report path")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    count, size = (4, 128) if args.quick else (args.images, args.size)
    report = {
        "benchmark": "bulk_drafts",
        **stamp(),
        "quick": args.quick,
        "model_version": "untrained default network (configs/model.yaml)",
        "results": measure(count, size, args.threads),
    }
    write_result(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
