"""One training recipe on a dataset's pool, scored on its fixed test set: for choosing defaults.

Usage::

    python -m bench.recipe --data colin27-aal|DIR --images 96 --steps 480 \\
        [--encoder mobilenet_v2 --weights imagenet-mobilenet_v2] [--lr 0.003] [--crop 128] \\
        [--batch 8] [--max-s 3600] [--workers 0] [--out FILE.json]
        [--click-model [--initial-clicks N] [--click-iterations N]]
        [--clicks N [--max-clicks 20]] [--keep DIR]

Trains the first ``--images`` images of the learning-curve pool (same split and shuffle as
``prelabel bench learning-curve``) with the worker's own ``fit`` (warm-up + cosine, the
configured augmentation and loss) for ``--steps`` steps or ``--max-s`` seconds, whichever
ends first, exports ONNX and scores the test set through the serving predictor. Prints one
JSON line (and writes it to ``--out``) with the machine stamp. Run it alone on the machine.

With ``--click-model`` the network trains as the worker's click model
(``interactive.enabled``: guidance channels, simulated clicks); ``--clicks N`` then
measures NoC@85/90 on the first N test images (``bench.clicks.noc_report``: from empty
and from the draft, GrabCut and, if trained, the click model, at most ``--max-clicks``).
``--keep DIR`` copies the exported ONNX files there. The training device is the worker's
(``detect_placement``: CUDA when torch sees a GPU), so this is also how a click model
trained far longer than a CPU round allows is measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.clicks import noc_report
from bench.environment import stamp
from bench.incremental_vs_full import load_sample, split_test_and_pool
from models.builder import build_network
from models.click_model import ClickPredictor
from models.config import NetworkConfig, default_normalization
from models.predictor import OnnxPredictor
from prelabel.clicking import MAX_CLICKS
from prelabel.datasets.catalog import dataset_folder
from prelabel.datasets.folder import list_items, read_schema
from prelabel.schema import LabelSchema
from training.config import TrainingConfig, load_training_config
from training.data import Sample
from training.evaluate import evaluate_onnx
from training.interactive import export_click_candidate, with_guidance_config
from training.train import StepPlan, click_training, export_candidate, fit, training_dataset

REPO = Path(__file__).resolve().parents[1]
logger = logging.getLogger(__name__)


def recipe_config(args: argparse.Namespace, classes: int, in_channels: int) -> TrainingConfig:
    """The repository's training config with this recipe's network, crop and batch."""
    config = load_training_config(REPO / "configs" / "train.yaml")
    weights = None if args.weights == "none" else args.weights
    mean, std = default_normalization(weights, in_channels)
    network = NetworkConfig.model_validate(
        {
            **config.model.model_dump(exclude={"mean", "std"}),
            "encoder": args.encoder,
            "encoder_weights": weights,
            "in_channels": in_channels,
            "classes": classes,
            "mean": mean,
            "std": std,
        }
    )
    data = config.data.model_copy(
        update={"crop_px": args.crop, "batch_size": args.batch, "num_workers": args.workers}
    )
    chosen = {"initial_clicks": args.initial_clicks, "click_iterations": args.click_iterations}
    interactive = config.interactive.model_copy(
        update={
            "enabled": args.click_model,
            **{key: value for key, value in chosen.items() if value is not None},
        }
    )
    return config.model_copy(
        update={
            "model": with_guidance_config(network, interactive),
            "data": data,
            "interactive": interactive,
        }
    )


def dataset_directory(args: argparse.Namespace) -> Path:
    """The dataset folder: a named dataset built under ``--data-dir``, else ``--data`` itself."""
    data_dir = args.data_dir or Path(tempfile.gettempdir()) / "prelabel-recipe"
    return dataset_folder(args.data, data_dir / args.data)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train and score one recipe; returns the result record."""
    import torch

    directory = dataset_directory(args)
    items = [item for item in list_items(directory) if item.mask_path is not None]
    test, pool = split_test_and_pool(items, args.seed)
    schema = read_schema(directory)
    train = [load_sample(item) for item in pool[: args.images]]
    in_channels = 3 if train[0].image.ndim == 3 else 1
    config = recipe_config(args, schema.num_classes, in_channels)
    torch.manual_seed(args.seed)
    net = build_network(config.model)
    dataset = training_dataset(train, config.model, config, schema.ignore_index)
    plan = StepPlan(steps=args.steps, lr=args.lr, max_s=args.max_s, warmup_share=0.1)
    fitted = fit(
        net,
        dataset,
        plan,
        config,
        ignore_index=schema.ignore_index,
        on_progress=logger.info,
        clicks=click_training(config, config.model, schema),
    )
    test_samples = [load_sample(item) for item in test]
    with tempfile.TemporaryDirectory() as tmp:
        exported = export_candidate(net, config.model, Path(tmp), config)
        scores = evaluate_onnx(exported.onnx, test_samples, schema)
        click_onnx = (
            export_click_candidate(net, config.model, Path(tmp))[0] if args.click_model else None
        )
        noc = (
            measure_noc(
                exported.onnx,
                click_onnx,
                test_samples[: args.clicks],
                schema,
                config,
                args.max_clicks,
            )
            if args.clicks
            else None
        )
        if args.keep is not None:
            keep(args.keep, [exported.onnx, *([click_onnx] if click_onnx else [])])
    return {
        "benchmark": "recipe",
        **stamp(),
        "data": args.data,
        "images": len(train),
        "test_images": len(test),
        "encoder": args.encoder,
        "weights": args.weights,
        "lr": args.lr,
        "crop": args.crop,
        "batch": args.batch,
        "workers": args.workers,
        "click_model": args.click_model,
        "interactive": config.interactive.model_dump() if args.click_model else None,
        **fitted.to_dict(),
        "test_miou": scores.miou,
        "clicks": noc,
    }


def measure_noc(
    draft_onnx: Path,
    click_onnx: Path | None,
    samples: Sequence[Sample],
    schema: LabelSchema,
    config: TrainingConfig,
    max_clicks: int,
) -> dict[str, Any]:
    """NoC@85/90 from empty and from the draft, with GrabCut and the click model if any."""
    started = time.perf_counter()
    click_model = (
        ClickPredictor.from_bytes(
            click_onnx.read_bytes(), click_radius_px=config.interactive.click_radius_px
        )
        if click_onnx is not None
        else None
    )
    report = noc_report(
        samples, schema, OnnxPredictor.from_path(draft_onnx), max_clicks, click_model=click_model
    )
    return {"images": len(samples), **report, "noc_s": time.perf_counter() - started}


def keep(directory: Path, files: Sequence[Path]) -> None:
    """Copy the exported models to ``directory`` (the run's folder is temporary)."""
    directory.mkdir(parents=True, exist_ok=True)
    for path in files:
        shutil.copy2(path, directory / path.name)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m bench.recipe``."""
    parser = argparse.ArgumentParser(prog="python -m bench.recipe", description=__doc__)
    parser.add_argument("--data", default="colin27-aal")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--steps", type=int, default=480)
    parser.add_argument("--encoder", default="mobilenet_v2")
    parser.add_argument("--weights", default="imagenet-mobilenet_v2", help="or none")
    parser.add_argument("--lr", type=float, default=0.003)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-s", type=float, default=3600.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--data-dir", type=Path, default=None, help="where to build the data")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--click-model", action="store_true", help="train the click model")
    parser.add_argument("--initial-clicks", type=int, default=None, help="default: the config's")
    parser.add_argument("--click-iterations", type=int, default=None, help="default: the config's")
    parser.add_argument("--clicks", type=int, default=0, help="test images for NoC; 0: off")
    parser.add_argument("--max-clicks", type=int, default=MAX_CLICKS)
    parser.add_argument("--keep", type=Path, default=None, help="copy the ONNX files here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = run(args)
    line = json.dumps(result, default=str)
    print(line)  # noqa: T201 - the benchmark's output
    if args.out is not None:
        args.out.write_text(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
