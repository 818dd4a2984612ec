"""One training recipe on a dataset's pool, scored on its fixed test set: for choosing defaults.

Usage::

    python -m bench.recipe --data colin27-aal --images 96 --steps 480 \\
        [--encoder mobilenet_v2 --weights imagenet-mobilenet_v2] [--lr 0.003] [--crop 128] \\
        [--batch 8] [--max-s 3600] [--out FILE.json]

Trains the first ``--images`` images of the learning-curve pool (same split and shuffle as
``prelabel bench learning-curve``) with the worker's own ``fit`` (warm-up + cosine, the
configured augmentation and loss) for ``--steps`` steps or ``--max-s`` seconds, whichever
ends first, exports ONNX and scores the test set through the serving predictor. Prints one
JSON line (and writes it to ``--out``) with the machine stamp. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.environment import stamp
from bench.incremental_vs_full import load_sample, split_test_and_pool
from models.builder import build_network
from models.config import NetworkConfig, default_normalization
from prelabel.datasets.catalog import prepare_dataset
from prelabel.datasets.folder import list_items, read_schema
from training.config import TrainingConfig, load_training_config
from training.evaluate import evaluate_onnx
from training.train import StepPlan, export_candidate, fit, training_dataset

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
    data = config.data.model_copy(update={"crop_px": args.crop, "batch_size": args.batch})
    return config.model_copy(update={"model": network, "data": data})


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train and score one recipe; returns the result record."""
    import torch

    directory = prepare_dataset(
        args.data, Path(tempfile.gettempdir()) / "prelabel-recipe" / args.data
    )
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
        net, dataset, plan, config, ignore_index=schema.ignore_index, on_progress=logger.info
    )
    with tempfile.TemporaryDirectory() as tmp:
        exported = export_candidate(net, config.model, Path(tmp), config)
        scores = evaluate_onnx(exported.onnx, [load_sample(item) for item in test], schema)
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
        **fitted.to_dict(),
        "test_miou": scores.miou,
    }


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
