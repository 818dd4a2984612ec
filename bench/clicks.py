"""Clicks to a target IoU (NoC) with a simulated clicking annotator, and refine latency.

Usage::

    python -m bench.clicks --data colin27-aal --model serving.onnx [--click-model click.onnx]
        [--images 20] [--quick]
        [--out bench/out/clicks.json]

For each test image and each class present in its ground truth (background left
out), the annotator clicks at most ``--max-clicks`` (20) times: each click at the
centre of the largest error region of the current refined mask (the maximum of the
distance transform of the largest connected component of missed or extra pixels),
positive for missed pixels, negative for extra ones. Every refinement starts from
the same base with all clicks so far, as ``POST …/refine`` does. NoC@85 / NoC@90 is
the number of clicks after which the class's IoU first reaches 0.85 / 0.90 (0 if
the base already does; ``max_clicks`` if it never does, counted as a failure),
starting (a) from an empty mask and (b) from the model's draft, with the
training-free fallback (``prelabel.refinement``, GrabCut) and, given ``--click-model``,
with the trained click model (``models.click_model``). The simulator is
``prelabel.clicking``, the one the click model trains and is gated with. Refine
latency p50/p95 is measured per method on test images resized to 256² and 512² with
three clicks.

``bench.learning_curve --clicks`` runs :func:`noc_report` per round on the serving
version. Run alone on the machine: the latency numbers assume nothing else runs.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from bench.environment import stamp, write_result
from bench.incremental_vs_full import load_sample, split_test_and_pool
from models.click_model import ClickPredictor
from models.predictor import OnnxPredictor
from prelabel.clicking import MAX_CLICKS, clicks_to_targets, next_click, summarise_noc
from prelabel.datasets.catalog import dataset_folder
from prelabel.datasets.folder import list_items, read_schema
from prelabel.refinement import MAX_CUT_PIXELS, Clicks, RefinedMask, Refiner, refine_class
from prelabel.schema import LabelSchema
from training.data import Sample

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "out" / "clicks.json"
LATENCY_SIZES = (256, 512)
LATENCY_REPEATS = 20


def noc_report(
    samples: Sequence[Sample],
    schema: LabelSchema,
    predictor: OnnxPredictor | None,
    max_clicks: int = MAX_CLICKS,
    click_model: ClickPredictor | None = None,
    fallback: Refiner = refine_class,
) -> dict[str, Any]:
    """NoC@85/90 per start and method, averaged over every (image, class present) pair.

    Starts: ``empty``, and ``draft`` with a predictor. Methods: the GrabCut fallback
    (keys ``empty``, ``draft``) and, with a click model, the model (``empty_model``,
    ``draft_model``).

    Returns:
        ``{start: {"noc85", "noc90", "failures90", "objects", "base_iou"}}``.
    """
    refiners: dict[str, Refiner] = {"": fallback}
    if click_model is not None:
        refiners["_model"] = click_model
    records: dict[str, list[dict[str, Any]]] = {}
    for sample in samples:
        empty = np.full(sample.mask.shape, schema.background, dtype=sample.mask.dtype)
        bases = {"empty": empty}
        if predictor is not None:
            bases["draft"] = predictor.predict(sample.image).mask
        for class_id in np.unique(sample.mask).tolist():
            if class_id in (schema.background, schema.ignore_index):
                continue
            truth = sample.mask == class_id
            for start, base in bases.items():
                for suffix, refiner in refiners.items():
                    records.setdefault(start + suffix, []).append(
                        clicks_to_targets(
                            refiner,
                            sample.image,
                            base,
                            truth,
                            class_id,
                            schema.background,
                            max_clicks,
                        )
                    )
    if not records:
        records = {"empty": []}
    return {start: summarise_noc(found, max_clicks) for start, found in records.items()}


def grabcut_refiner(max_cut_pixels: int) -> Refiner:
    """The GrabCut fallback with another resolution cap."""

    def refine(
        pixels: npt.NDArray[np.uint8],
        base: npt.NDArray[np.integer],
        class_id: int,
        clicks: Clicks,
        *,
        background: int,
    ) -> RefinedMask:
        return refine_class(
            pixels, base, class_id, clicks, background=background, max_cut_pixels=max_cut_pixels
        )

    return refine


def refine_latency(
    samples: Sequence[Sample],
    schema: LabelSchema,
    repeats: int,
    refiner: Refiner = refine_class,
) -> dict[str, Any]:
    """p50/p95 ms of one refinement (2 positive, 1 negative click) at 256² and 512²."""
    result: dict[str, Any] = {}
    for size in LATENCY_SIZES:
        timings: list[float] = []
        for n in range(repeats):
            sample = samples[n % len(samples)]
            image = np.asarray(
                cv2.resize(sample.image, (size, size), interpolation=cv2.INTER_LINEAR),
                dtype=np.uint8,
            )
            truth = np.asarray(
                cv2.resize(sample.mask, (size, size), interpolation=cv2.INTER_NEAREST),
                dtype=sample.mask.dtype,
            )
            classes = [c for c in np.unique(truth).tolist() if c != schema.background]
            if not classes:
                continue
            class_id = classes[n % len(classes)]
            region = truth == class_id
            ys, xs = np.nonzero(region)
            inside = [(int(xs[i]), int(ys[i])) for i in (0, len(xs) // 2)]
            outside = next_click(np.ones_like(region), region)
            negative = [outside[0]] if outside else []
            base = np.where(region, schema.background, truth).astype(truth.dtype)
            clicks = Clicks(positive=inside, negative=negative)
            started = time.perf_counter()
            refiner(image, base, class_id, clicks, background=schema.background)
            timings.append((time.perf_counter() - started) * 1000.0)
        result[f"{size}"] = {
            "p50_ms": float(np.percentile(timings, 50)),
            "p95_ms": float(np.percentile(timings, 95)),
            "calls": len(timings),
        }
    return result


def load_test_samples(
    data: str, data_dir: Path, images: int, seed: int
) -> tuple[list[Sample], LabelSchema]:
    """The first ``images`` of the learning curve's fixed test split of ``data``."""
    directory = dataset_folder(data, data_dir)
    items = [item for item in list_items(directory) if item.mask_path is not None]
    test, _ = split_test_and_pool(items, seed)
    return [load_sample(item) for item in test[:images]], read_schema(directory)


def untrained_click_model(config_path: Path, schema: LabelSchema) -> ClickPredictor:
    """A click model of the architecture in ``config_path`` with its packaged start weights."""
    import tempfile

    from models.builder import build_network
    from models.config import load_network_config
    from models.guidance import export_click_onnx

    config = load_network_config(config_path).model_copy(
        update={"classes": schema.num_classes, "guidance_channels": 3}
    )
    net = build_network(config)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "click.onnx"
        export_click_onnx(net, path, config=config, sample_hw=(256, 256))
        return ClickPredictor.from_bytes(path.read_bytes())


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point: NoC from empty and from the model's draft, refine latency."""
    parser = argparse.ArgumentParser(prog="python -m bench.clicks", description=__doc__)
    parser.add_argument("--data", default="colin27-aal", help="dataset name or folder")
    parser.add_argument("--data-dir", type=Path, default=REPO / "bench" / "out" / "data")
    parser.add_argument("--model", type=Path, default=None, help="ONNX model for the drafts")
    parser.add_argument(
        "--click-model",
        type=Path,
        default=None,
        help="ONNX click model (image + guidance inputs): measured beside GrabCut",
    )
    parser.add_argument(
        "--click-model-config",
        type=Path,
        default=None,
        help="network YAML (configs/model.yaml): latency of an untrained click model of that "
        "architecture (the weights do not change the time); implies --latency-only",
    )
    parser.add_argument("--latency-only", action="store_true", help="skip NoC")
    parser.add_argument(
        "--max-cut-pixels",
        type=int,
        default=MAX_CUT_PIXELS,
        help=f"GrabCut's resolution cap (default {MAX_CUT_PIXELS})",
    )
    parser.add_argument("--images", type=int, default=20, help="test images (quick: 2)")
    parser.add_argument("--max-clicks", type=int, default=MAX_CLICKS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quick", action="store_true", help="2 images, 3 clicks: a smoke test")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    images = 2 if args.quick else args.images
    max_clicks = 3 if args.quick else args.max_clicks
    samples, schema = load_test_samples(args.data, args.data_dir / args.data, images, args.seed)
    predictor = OnnxPredictor.from_path(args.model) if args.model else None
    started = time.perf_counter()
    click_model = (
        ClickPredictor.from_bytes(args.click_model.read_bytes()) if args.click_model else None
    )
    if args.click_model_config is not None:
        click_model = untrained_click_model(args.click_model_config, schema)
    latency_only = args.latency_only or args.click_model_config is not None
    grabcut = grabcut_refiner(args.max_cut_pixels)
    noc = (
        None
        if latency_only
        else noc_report(samples, schema, predictor, max_clicks, click_model, grabcut)
    )
    repeats = 3 if args.quick else LATENCY_REPEATS
    latency = {"grabcut": refine_latency(samples, schema, repeats, grabcut)}
    if click_model is not None:
        latency["model"] = refine_latency(samples, schema, repeats, click_model)
    result = {
        "benchmark": "clicks",
        "quick": args.quick,
        "dataset": args.data,
        "test_images": len(samples),
        "model": str(args.model) if args.model else None,
        "click_model": str(args.click_model or args.click_model_config or "") or None,
        "max_cut_pixels": args.max_cut_pixels,
        "noc": noc,
        "refine_latency": latency,
        "wall_s": time.perf_counter() - started,
        **stamp(),
    }
    write_result(result, args.out)
    logger.info("NoC %s; latency %s", noc, latency)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
