"""Incremental fine-tuning vs full retraining after each batch of corrections, same run.

Usage::

    python -m bench.incremental_vs_full [--quick] [--rounds 4] [--batch 64]
        [--out bench/out/incremental_vs_full.json]

On the Colin27 + AAL dataset (15 classes; Debian package mricron-data), a fixed
test set (20% of slices, by a hash of the slice name) is never imported. The rest
is the pool. Two projects receive the same corrections, ``--batch`` slices per
round; after each round, one project fine-tunes its serving version
(``incremental``: ``optim.epochs_incremental`` epochs over all corrections so far),
the other trains from scratch (``full``: ``optim.epochs_full``). Both go through
the worker's real ``run_training`` (split, train, export, held-out gate, registry).
Each candidate is scored on the test set through the ONNX predictor.

Target ([continuous]): incremental reaches the full retrain's test mIoU within
1 point in at most 1/3 of its time.
"""

from __future__ import annotations

import argparse
import logging
import random
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.environment import stamp, write_result
from prelabel.codecs import decode_image, decode_index_png
from prelabel.corrections import submit_correction
from prelabel.datasets.catalog import prepare_dataset
from prelabel.datasets.folder import DatasetItem, list_items, read_schema
from prelabel.images import list_images
from prelabel.importer import import_dataset
from prelabel.jobs import RunKind
from prelabel.projects import get_project
from prelabel.schema import LabelSchema
from prelabel.settings import StorageSettings
from prelabel.split import held_out_score
from prelabel.workspace import Workspace, open_workspace
from training.config import TrainingConfig, load_training_config
from training.data import Sample
from training.evaluate import evaluate_onnx
from training.train import run_training

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "out" / "incremental_vs_full.json"
TEST_SHARE = 0.2
MAX_PIXELS = 10_000_000


def load_mask(item: DatasetItem) -> npt.NDArray[np.integer]:
    """The ground-truth (H, W) index mask of a dataset item."""
    if item.mask_path is None:
        raise ValueError(f"{item.stem} has no mask")
    return decode_index_png(item.mask_path.read_bytes(), max_pixels=MAX_PIXELS)


def load_sample(item: DatasetItem) -> Sample:
    """A dataset item as an evaluation sample (image and ground-truth mask)."""
    image = decode_image(item.image_path.read_bytes(), max_pixels=MAX_PIXELS)
    return Sample(item.stem, "", image, load_mask(item))


def split_test_and_pool(
    items: list[DatasetItem], seed: int
) -> tuple[list[DatasetItem], list[DatasetItem]]:
    """The fixed test set (never imported) and the shuffled pool of the rest."""
    test = [i for i in items if held_out_score(f"bench:{i.stem}") < TEST_SHARE]
    pool = [i for i in items if held_out_score(f"bench:{i.stem}") >= TEST_SHARE]
    random.Random(seed).shuffle(pool)
    return test, pool


def add_corrections(workspace: Workspace, project: str, batch: Sequence[DatasetItem]) -> None:
    """Submit the ground truth of ``batch`` as corrections (as an annotator would)."""
    with workspace.sessions() as session, session.begin():
        found = get_project(session, project)
        images = {image.filename: image for image in list_images(session, found.id)}
        for item in batch:
            submit_correction(
                session,
                workspace.blobs,
                project=found,
                image=images[item.image_path.name],
                mask=load_mask(item),
                annotator="bench",
                source="bench",
            )


def train_and_score(
    workspace: Workspace,
    project: str,
    config: TrainingConfig,
    kind: RunKind,
    test: list[Sample],
    schema: LabelSchema,
    run_id: str,
) -> dict[str, Any]:
    """One training run of ``kind``; its wall time and its candidate's test mIoU."""
    with workspace.sessions() as session:
        found = get_project(session, project)
    started = time.perf_counter()
    outcome = run_training(workspace, found, config, run_id=run_id, kind=kind)
    wall_s = time.perf_counter() - started
    with tempfile.NamedTemporaryFile(suffix=".onnx") as onnx_file:
        onnx_file.write(workspace.blobs.get(outcome.model.onnx_key))
        onnx_file.flush()
        test_miou = evaluate_onnx(Path(onnx_file.name), test, schema).miou
    return {
        "kind": outcome.kind.value,
        "version": outcome.model.version,
        "promoted": outcome.promoted,
        "wall_s": wall_s,
        "train_s": outcome.train_s,
        "test_miou": test_miou,
        "held_out_miou": outcome.candidate_miou,
    }


def quick_config(config: TrainingConfig) -> TrainingConfig:
    """A configuration that finishes in seconds: for CI smoke tests only."""
    return config.model_copy(
        update={
            "data": config.data.model_copy(update={"crop_px": 96}),
            "optim": config.optim.model_copy(
                update={"epochs_full": 2, "epochs_incremental": 1}
                | {"min_steps_full": 1, "min_steps_incremental": 1}
            ),
        }
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build the data, stream it in rounds into both projects, train both ways each round."""
    home = Path(tempfile.mkdtemp(prefix="prelabel-bench-"))
    data = prepare_dataset("colin27-aal", args.data_dir or home / "colin27-aal")
    schema = read_schema(data)
    test_items, pool = split_test_and_pool(list_items(data), args.seed)
    rounds = [pool[i * args.batch : (i + 1) * args.batch] for i in range(args.rounds)]
    if args.quick:
        test_items = test_items[:12]
    test = [load_sample(item) for item in test_items]
    config = load_training_config(args.config)
    config = quick_config(config) if args.quick else config
    workspace = open_workspace(StorageSettings(home=home))
    shown = {item.stem for batch in rounds for item in batch}
    for project in ("incremental", "full"):
        import_dataset(
            workspace,
            data,
            project=project,
            max_pixels=MAX_PIXELS,
            actor="bench",
            with_mask=lambda stem: False,
            include=shown.__contains__,
        )
    results = []
    for number, batch in enumerate(rounds, start=1):
        entry: dict[str, Any] = {"round": number, "corrected": number * args.batch}
        for project, kind in (("incremental", RunKind.INCREMENTAL), ("full", RunKind.FULL)):
            add_corrections(workspace, project, batch)
            entry[project] = train_and_score(
                workspace, project, config, kind, test, schema, run_id=f"{project}-{number}"
            )
        logger.info("round %d: %s", number, entry)
        results.append(entry)
    return {
        "rounds": results,
        "summary": summarise(results),
        "test_images": len(test),
        "pool_images": len(pool),
        "config": config.model_dump(mode="json"),
    }


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Time ratio and mIoU gap, per round after the first (where both fine-tune from a model)."""
    later = rounds[1:] or rounds
    gaps = [100 * (r["full"]["test_miou"] - r["incremental"]["test_miou"]) for r in later]
    ratios = [r["incremental"]["wall_s"] / r["full"]["wall_s"] for r in later]
    return {
        "max_miou_gap_points": max(gaps),
        "final_miou_gap_points": gaps[-1],
        "mean_time_ratio": sum(ratios) / len(ratios),
        "max_time_ratio": max(ratios),
        "target_met": max(gaps) <= 1.0 and max(ratios) <= 1 / 3,
        "note": "round 1 has no model to fine-tune: both runs train from scratch",
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m bench.incremental_vs_full``."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.incremental_vs_full", description=__doc__
    )
    parser.add_argument("--quick", action="store_true", help="2 tiny rounds: a CI smoke test")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64, help="corrections per round")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "train.yaml")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.batch = 2, 12
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    result = {
        "benchmark": "incremental_vs_full",
        **stamp(),
        "quick": args.quick,
        "dataset": "colin27-aal",
        **run(args),
        "total_s": time.perf_counter() - started,
    }
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
