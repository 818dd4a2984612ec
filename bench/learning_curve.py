"""Learning curve of the pre-labeling loop: do drafts get better as corrections arrive?

Usage::

    prelabel bench learning-curve [--data colin27-aal|mni-tissue|DIR] [--out DIR] [--quick]
        [--batch 16] [--pool-size N] [--seed 0]
    python -m bench.learning_curve ...   (same options)

A dataset folder (``images/``, ``masks/``, ``labels.yaml``; any channels, any class
count) or a named real dataset is split once: a fixed test set (stems whose
``held_out_score("bench:<stem>") < 0.2``, never uploaded) and a pool, streamed in
rounds of ``--batch`` images. The benchmark starts a real service and a real worker
(subprocesses on a temporary ``PRELABEL_HOME``) and drives them over HTTP only:

* one project per labeling order (``random``, ``uncertainty``: ``GET .../queue``);
  each round takes the next ``--batch`` images of that order, fetches each draft,
  and submits the ground truth as the correction of a perfect annotator. The
  service scores it against the draft it served: that is the annotator's effort.
  The first round has no model: its drafts are empty (labeling from scratch).
* the project's training policy retrains after every round (``retrain_after`` =
  ``first_model_after`` = batch, ``full_retrain_every: 0`` so that every run after
  the first fine-tunes, ``margin: 0``); the worker's held-out gate decides promotion.
  The benchmark waits until the worker is idle (runs done, drafts precomputed).
* after each round the serving version (read from the temporary home) is scored on
  the test set through the ONNX predictor.
* reference lines in the same run, same service, worker and training config: the
  ``upper-bound`` project gets the whole pool and one full training run; the
  ``static`` project gets the first rounds of the random order and one full run.

Writes ``results.json``, ``results.md`` and ``learning_curve.png`` under ``--out``.

Targets ([learning-curve], Colin27/AAL): after 25% of the pool the served test mIoU
is >= 90% of the upper bound; >= 70% of the pixels to paint are saved over the
project; uncertainty order >= random order at every budget after round 2; the
served test mIoU never drops between rounds.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

from bench.clicks import noc_report
from bench.environment import stamp, write_result
from bench.incremental_vs_full import load_mask, load_sample, split_test_and_pool
from models.click_model import interactive_artifact, load_click_predictor
from models.registry import serving_version
from models.serving import load_predictor
from prelabel.accounts import ADMIN_TOKEN_FILE
from prelabel.datasets.catalog import DATASET_BUILDERS, dataset_folder
from prelabel.datasets.folder import DatasetItem, list_items, read_schema
from prelabel.metrics import DraftComparison, compare_masks
from prelabel.projects import get_project
from prelabel.schema import LabelSchema
from prelabel.settings import StorageSettings
from prelabel.workspace import open_workspace
from training.config import TrainingConfig, load_training_config
from training.data import Sample
from training.evaluate import evaluate_onnx

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "out" / "learning_curve"
DEFAULT_CONFIG = REPO / "configs" / "train.yaml"
DEFAULT_DATA = "colin27-aal"
QUICK_DATA = "mni-tissue"
ORDERINGS = ("random", "uncertainty")
ANNOTATOR = "bench-perfect-annotator"
ACCEPTANCE_THRESHOLD = 0.01
UPLOAD_CHUNK = 32
IDLE_TIMEOUT_S = 1800.0
START_TIMEOUT_S = 120.0
POLL_S = 0.5
MIOU_SHARE_TARGET = 0.9
BUDGET_SHARE = 0.25
EFFORT_TARGET = 0.7
STROKE_ROUNDS_EXEMPT = 2
"""Stroke effort must be below labeling from scratch from the third round on."""


class BenchError(RuntimeError):
    """The benchmark could not drive the service or worker (the message says which and why)."""


@dataclass(frozen=True)
class BenchOptions:
    """What one run measures; ``--quick`` shrinks everything for a CI smoke test."""

    data: str = DEFAULT_DATA
    out: Path = DEFAULT_OUT
    quick: bool = False
    batch: int = 16
    pool_size: int | None = None
    test_size: int | None = None
    seed: int = 0
    static_rounds: int = 2
    config: Path = DEFAULT_CONFIG
    self_training: bool = False
    clicks: int = 0
    """Test images for NoC (``bench.clicks``) per round, from empty and from the draft; 0: off."""
    click_model: bool = False
    """Train the click model (``interactive.enabled``); NoC is then measured with it too."""


@dataclass(frozen=True)
class BenchDataset:
    """The dataset and its fixed split: a test set never uploaded, a pool streamed in rounds."""

    name: str
    directory: Path
    schema: LabelSchema
    test: list[DatasetItem]
    pool: list[DatasetItem]


@dataclass
class Stack:
    """A running service and worker on a temporary home, and an HTTP client for the service."""

    home: Path
    client: httpx.Client
    env: dict[str, str]
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def restart_worker(self, config_path: Path) -> None:
        """Stop the worker and start another one that trains with ``config_path``."""
        _stop(self.processes["worker"])
        self.env = {**self.env, "PRELABEL_TRAINING_CONFIG": str(config_path)}
        self.processes["worker"] = _spawn(["worker"], self.env, self.home / "worker.log")

    def log_tail(self, name: str, lines: int = 30) -> str:
        """The last lines of a subprocess's log (for error messages)."""
        path = self.home / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        """Raise BenchError (with its log) if the service or worker has exited."""
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise BenchError(
                    f"the {name} exited with code {process.returncode}; "
                    f"its log ends:\n{self.log_tail(name)}"
                )


# --- data ---------------------------------------------------------------------------------


def load_bench_dataset(options: BenchOptions, home: Path) -> BenchDataset:
    """Prepare the dataset (named: built into ``home``) and split it into test set and pool."""
    directory = dataset_folder(options.data, home / "datasets" / options.data)
    items = [item for item in list_items(directory) if item.mask_path is not None]
    if not items:
        raise ValueError(f"{directory} has no image with a mask; the benchmark needs ground truth")
    test, pool = split_test_and_pool(items, options.seed)
    test = test[: options.test_size] if options.test_size else test
    pool = pool[: options.pool_size] if options.pool_size else pool
    if len(pool) < options.batch:
        raise ValueError(
            f"the pool has {len(pool)} images, fewer than one round of {options.batch}"
        )
    name = options.data if options.data in DATASET_BUILDERS else directory.name
    return BenchDataset(name, directory, read_schema(directory), test, pool)


def scratch_effort(item: DatasetItem, schema: LabelSchema) -> DraftComparison:
    """The effort of labeling ``item`` from scratch: its ground truth against an empty draft."""
    truth = load_mask(item)
    empty = np.full(truth.shape, schema.background, dtype=truth.dtype)
    return compare_masks(
        empty,
        truth,
        num_classes=schema.num_classes,
        ignore_index=schema.ignore_index,
        acceptance_threshold=ACCEPTANCE_THRESHOLD,
    )


def training_config(options: BenchOptions) -> TrainingConfig:
    """The worker's training config: the repository's, or a tiny one for ``--quick``."""
    config = load_training_config(options.config)
    if options.self_training:
        config = config.model_copy(
            update={"data": config.data.model_copy(update={"self_training": True})}
        )
    if options.click_model:
        config = config.model_copy(
            update={"interactive": config.interactive.model_copy(update={"enabled": True})}
        )
    if not options.quick:
        return config
    return config.model_copy(
        update={
            "data": config.data.model_copy(update={"crop_px": 96}),
            "optim": config.optim.model_copy(
                update={"epochs_full": 2, "epochs_incremental": 1}
                | {"min_steps_full": 1, "min_steps_incremental": 1}
            ),
        }
    )


def upper_bound_config(config: TrainingConfig, loop_steps: int) -> TrainingConfig:
    """One full run with at least as many optimiser steps as a loop used in all its rounds."""
    optim = config.optim.model_copy(
        update={"min_steps_full": max(loop_steps, 1), "epochs_full": 0, "max_minutes": 1e6}
    )
    return config.model_copy(update={"optim": optim})


def write_config(config: TrainingConfig, home: Path, name: str = "train.yaml") -> Path:
    """Write ``config`` as a self-contained YAML (network inline) for the worker."""
    path = home / name
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    return path


# --- service and worker -------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as stream:
        return subprocess.Popen(
            [sys.executable, "-m", "prelabel.cli", *args],
            env=env,
            stdout=stream,
            stderr=subprocess.STDOUT,
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_healthy(stack: Stack, timeout_s: float = START_TIMEOUT_S) -> None:
    """Wait until ``GET /health`` answers 200 (the service has started and migrated)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stack.check_alive()
        try:
            if stack.client.get("/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(POLL_S)
    raise BenchError(f"the service did not answer /health within {timeout_s:.0f} s")


@contextmanager
def running_stack(home: Path, config_path: Path) -> Iterator[Stack]:
    """Start ``prelabel serve`` and ``prelabel worker`` on ``home``; stop both on exit."""
    port = free_port()
    env = {
        **os.environ,
        "PRELABEL_HOME": str(home),
        "PRELABEL_TRAINING_CONFIG": str(config_path),
        "PRELABEL_POLL_INTERVAL_S": "0.5",
    }
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300.0)
    stack = Stack(home, client, env)
    try:
        serve = ["serve", "--host", "127.0.0.1", "--port", str(port)]
        stack.processes["service"] = _spawn(serve, env, home / "service.log")
        stack.processes["worker"] = _spawn(["worker"], stack.env, home / "worker.log")
        wait_healthy(stack)
        token = (home / ADMIN_TOKEN_FILE).read_text().strip()
        client.headers["Authorization"] = f"Bearer {token}"
        yield stack
    finally:
        for process in stack.processes.values():
            _stop(process)
        client.close()


# --- HTTP helpers -------------------------------------------------------------------------


def call(stack: Stack, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One HTTP call to the service; a 4xx/5xx answer raises BenchError with its body."""
    response = stack.client.request(method, url, **kwargs)
    if response.is_error:
        stack.check_alive()
        raise BenchError(f"{method} {url} -> {response.status_code}: {response.text[:500]}")
    return response


def create_project(stack: Stack, name: str, schema: LabelSchema, policy: dict[str, Any]) -> None:
    """Create a project with the dataset's schema and a training policy."""
    body = {
        "name": name,
        **schema.model_dump(mode="json", exclude_none=True),
        "acceptance_threshold": ACCEPTANCE_THRESHOLD,
        "training_policy": policy,
    }
    call(stack, "POST", "/projects", json=body)


def upload(stack: Stack, project: str, items: Sequence[DatasetItem]) -> dict[str, DatasetItem]:
    """Upload the images of ``items`` (never their masks); returns image id -> item."""
    by_name = {item.image_path.name: item for item in items}
    uploaded: dict[str, DatasetItem] = {}
    for start in range(0, len(items), UPLOAD_CHUNK):
        chunk = items[start : start + UPLOAD_CHUNK]
        files = [("files", (i.image_path.name, i.image_path.read_bytes())) for i in chunk]
        answer = call(stack, "POST", f"/projects/{project}/images", files=files).json()
        uploaded.update({image["id"]: by_name[image["filename"]] for image in answer["images"]})
    return uploaded


def submit_truth(
    stack: Stack, project: str, image_id: str, item: DatasetItem, draft_id: str | None
) -> dict[str, Any]:
    """Submit the ground truth as the correction; returns the service's answer (with metrics)."""
    if item.mask_path is None:
        raise ValueError(f"{item.stem} has no mask")
    files = {"mask": ("mask.png", item.mask_path.read_bytes(), "image/png")}
    data = {"annotator": ANNOTATOR, **({"draft_id": draft_id} if draft_id else {})}
    url = f"/projects/{project}/images/{image_id}/correction"
    answer: dict[str, Any] = call(stack, "PUT", url, files=files, data=data).json()
    return answer


def serving(stack: Stack, project: str) -> str | None:
    """The project's serving version over HTTP, None before the first model."""
    models = call(stack, "GET", f"/projects/{project}/models").json()
    return next((m["version"] for m in models if m["status"] == "serving"), None)


def training_runs(stack: Stack, project: str) -> list[dict[str, Any]]:
    """The project's training runs, newest first."""
    runs: list[dict[str, Any]] = call(stack, "GET", f"/projects/{project}/training-runs").json()
    return runs


def drafts_settled(stack: Stack, project: str) -> bool:
    """Whether every unlabelled image has a precomputed draft of the serving version."""
    version = serving(stack, project)
    if version is None:
        return True
    params = {"strategy": "uncertainty", "limit": 10_000}
    queue = call(stack, "GET", f"/projects/{project}/queue", params=params).json()
    return all(entry["model_version"] == version for entry in queue)


def wait_idle(stack: Stack, project: str, timeout_s: float = IDLE_TIMEOUT_S) -> None:
    """Wait until no run of ``project`` is queued or running and its drafts are precomputed."""
    deadline = time.monotonic() + timeout_s
    busy: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        stack.check_alive()
        runs = training_runs(stack, project)
        busy = [r for r in runs if r["status"] in ("queued", "running")]
        if not busy and drafts_settled(stack, project):
            return
        time.sleep(POLL_S)
    raise BenchError(
        f"the worker did not go idle on project {project} within {timeout_s:.0f} s "
        f"(busy runs: {[(r['id'], r['status'], r['progress']) for r in busy]}); "
        f"worker log ends:\n{stack.log_tail('worker')}"
    )


# --- test-set scoring (reads the temporary home directly) --------------------------------


class ServingScorer:
    """Scores a project's serving version on the fixed test set (cached per version)."""

    def __init__(self, home: Path, test: list[Sample], schema: LabelSchema) -> None:
        self.workspace = open_workspace(StorageSettings(home=home))
        self.test = test
        self.schema = schema
        self.cache: dict[tuple[str, str], float | None] = {}

    def score(self, project: str) -> tuple[str | None, float | None]:
        """``(serving version, its test mIoU)``; ``(None, None)`` before the first model."""
        with self.workspace.sessions() as session:
            record = serving_version(session, get_project(session, project).id)
        if record is None:
            return None, None
        key = (project, record.version)
        if key not in self.cache:
            with tempfile.NamedTemporaryFile(suffix=".onnx") as onnx_file:
                onnx_file.write(self.workspace.blobs.get(record.onnx_key))
                onnx_file.flush()
                miou = evaluate_onnx(Path(onnx_file.name), self.test, self.schema).miou
            self.cache[key] = float(miou) if isinstance(miou, float) else None
        return record.version, self.cache[key]

    def noc(self, project: str, images: int) -> dict[str, Any]:
        """NoC@85/90 on ``images`` test images, from empty and from the serving version's
        drafts (from empty only before the first model), with the GrabCut fallback and,
        if the serving version has one, its click model."""
        with self.workspace.sessions() as session:
            record = serving_version(session, get_project(session, project).id)
        predictor = load_predictor(self.workspace.blobs, record) if record else None
        artifact = interactive_artifact(record.config) if record else None
        click_model = (
            load_click_predictor(self.workspace.blobs, artifact) if artifact is not None else None
        )
        return noc_report(self.test[:images], self.schema, predictor, click_model=click_model)

    def close(self) -> None:
        """Release the database connections."""
        self.workspace.engine.dispose()


# --- one round ----------------------------------------------------------------------------


def correct_image(
    stack: Stack, project: str, entry: dict[str, Any], item: DatasetItem, scratch: DraftComparison
) -> dict[str, Any]:
    """Fetch the draft an annotator would start from, submit the truth, return the effort."""
    url = f"/projects/{project}/images/{entry['id']}/draft"
    draft = call(stack, "GET", url)
    answer = submit_truth(stack, project, entry["id"], item, draft.headers["x-draft-id"])
    metrics = answer["metrics"]
    return {
        "stem": item.stem,
        "draft_version": draft.headers.get("x-model-version"),
        "uncertainty": entry["uncertainty"],
        "mean_iou": metrics["mean_iou"],
        "accepted": metrics["accepted"],
        "changed_pixels": metrics["changed_pixels"],
        "changed_pixel_fraction": metrics["changed_pixel_fraction"],
        "changed_regions": metrics["changed_regions"],
        "strokes": metrics["strokes"],
        "brush_strokes": metrics["brush_strokes"],
        "scratch_changed_pixels": scratch.changed_pixels,
        "scratch_changed_pixel_fraction": scratch.changed_pixel_fraction,
        "scratch_changed_regions": scratch.changed_regions,
        "scratch_strokes": scratch.strokes,
        "scratch_brush_strokes": scratch.brush_strokes,
    }


def correct_round(
    stack: Stack,
    project: str,
    images: dict[str, DatasetItem],
    scratch: dict[str, DraftComparison],
    options: BenchOptions,
) -> list[dict[str, Any]]:
    """Label the next ``batch`` images in the project's order; one effort record each."""
    params = {"strategy": project, "limit": options.batch, "seed": options.seed}
    queue = call(stack, "GET", f"/projects/{project}/queue", params=params).json()
    if len(queue) < options.batch:
        raise BenchError(f"project {project} has {len(queue)} images left, a round needs more")
    return [
        correct_image(stack, project, entry, images[entry["id"]], scratch[entry["id"]])
        for entry in queue
    ]


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _single(values: Sequence[Any]) -> Any:
    """The one distinct value of ``values``, else the sorted distinct values."""
    distinct = sorted({str(v) if v is not None else None for v in values}, key=str)
    return distinct[0] if len(distinct) == 1 else distinct


def round_record(
    number: int, corrected: int, pool: int, efforts: list[dict[str, Any]]
) -> dict[str, Any]:
    """Aggregate a round's per-image efforts (drafts made before this round's training)."""
    uncertainties = [e["uncertainty"] for e in efforts if e["uncertainty"] is not None]
    return {
        "round": number,
        "corrected": corrected,
        "pool_share": corrected / pool,
        "draft_model_version": _single([e["draft_version"] for e in efforts]),
        "draft_miou": _mean([e["mean_iou"] for e in efforts]),
        "acceptance_rate": _mean([1.0 if e["accepted"] else 0.0 for e in efforts]),
        "changed_pixel_fraction": _mean([e["changed_pixel_fraction"] for e in efforts]),
        "changed_pixels": int(sum(e["changed_pixels"] for e in efforts)),
        "changed_regions": _mean([e["changed_regions"] for e in efforts]),
        "scratch_changed_pixel_fraction": _mean(
            [e["scratch_changed_pixel_fraction"] for e in efforts]
        ),
        "scratch_changed_pixels": int(sum(e["scratch_changed_pixels"] for e in efforts)),
        "scratch_changed_regions": _mean([e["scratch_changed_regions"] for e in efforts]),
        "strokes": _mean([e["strokes"] for e in efforts]),
        "scratch_strokes": _mean([e["scratch_strokes"] for e in efforts]),
        "brush_strokes": _mean([e["brush_strokes"] for e in efforts]),
        "scratch_brush_strokes": _mean([e["scratch_brush_strokes"] for e in efforts]),
        "mean_uncertainty": _mean(uncertainties),
        "images": [e["stem"] for e in efforts],
    }


def new_runs(stack: Stack, project: str, seen: set[str]) -> list[dict[str, Any]]:
    """The project's training runs not in ``seen`` (oldest first), summarised; adds them to it."""
    fresh = [r for r in reversed(training_runs(stack, project)) if r["id"] not in seen]
    seen.update(r["id"] for r in fresh)
    keys = ("kind", "trigger", "status", "model_version", "decision", "candidate_miou")
    return [
        {k: r[k] for k in (*keys, "serving_miou", "train_s", "error")}
        | {"steps": r["progress"].get("steps")}
        for r in fresh
    ]


# --- the loop and the reference lines -----------------------------------------------------


@dataclass
class LoopProject:
    """A loop project's images, from-scratch efforts, seen runs and recorded rounds."""

    name: str
    images: dict[str, DatasetItem]
    scratch: dict[str, DraftComparison]
    seen_runs: set[str] = field(default_factory=set)
    rounds: list[dict[str, Any]] = field(default_factory=list)


def loop_policy(batch: int) -> dict[str, Any]:
    """Retrain after every round; every run after the first fine-tunes; gate margin 0."""
    return {
        "first_model_after": batch,
        "retrain_after": batch,
        "retrain_every_minutes": None,
        "full_retrain_every": 0,
        "margin": 0.0,
        "enabled": True,
    }


def setup_loop_project(
    stack: Stack, name: str, split: BenchDataset, scratch: dict[str, DraftComparison], batch: int
) -> LoopProject:
    """Create a loop project and upload the whole pool (images only)."""
    create_project(stack, name, split.schema, loop_policy(batch))
    images = upload(stack, name, split.pool)
    return LoopProject(name, images, {i: scratch[item.stem] for i, item in images.items()})


def play_round(
    stack: Stack, project: LoopProject, number: int, scorer: ServingScorer, options: BenchOptions
) -> dict[str, Any]:
    """One round: correct a batch, let the worker train and gate, score the serving version."""
    round_started = time.perf_counter()
    efforts = correct_round(stack, project.name, project.images, project.scratch, options)
    started = time.perf_counter()
    wait_idle(stack, project.name)
    record = round_record(number, number * options.batch, len(project.images), efforts)
    runs = new_runs(stack, project.name, project.seen_runs)
    version, miou = scorer.score(project.name)
    record.update(
        model_version=version,
        test_miou=miou,
        train_s=float(sum(r["train_s"] or 0.0 for r in runs)),
        idle_wait_s=time.perf_counter() - started,
        round_wall_s=time.perf_counter() - round_started,
        train_steps=int(sum(r["steps"] or 0 for r in runs)),
        runs=runs,
    )
    if options.clicks:
        record["clicks"] = scorer.noc(project.name, options.clicks)
    logger.info(
        "%s round %d: %d corrected, %s serves, test mIoU %s, draft mIoU %.3f, changed %.3f",
        *(project.name, number, record["corrected"], version, miou),
        *(record["draft_miou"], record["changed_pixel_fraction"]),
    )
    return record


def reference_line(
    stack: Stack, name: str, split: BenchDataset, items: list[DatasetItem], scorer: ServingScorer
) -> dict[str, Any]:
    """Upload ``items`` with their truth, train once from scratch, score the result."""
    create_project(stack, name, split.schema, {"enabled": False})
    for image_id, item in upload(stack, name, items).items():
        submit_truth(stack, name, image_id, item, draft_id=None)
    call(stack, "POST", f"/projects/{name}/training-runs", json={"kind": "full"})
    started = time.perf_counter()
    wait_idle(stack, name)
    runs = new_runs(stack, name, set())
    version, miou = scorer.score(name)
    logger.info("%s on %d images: %s, test mIoU %s", name, len(items), version, miou)
    return {
        "images": len(items),
        "model_version": version,
        "test_miou": miou,
        "train_s": float(sum(r["train_s"] or 0.0 for r in runs)),
        "wall_s": time.perf_counter() - started,
        "runs": runs,
    }


def run_loop(
    stack: Stack, split: BenchDataset, scorer: ServingScorer, options: BenchOptions
) -> dict[str, LoopProject]:
    """Both orderings, round by round in lockstep (one at a time: the worker is shared)."""
    scratch = {item.stem: scratch_effort(item, split.schema) for item in split.pool}
    projects = {
        name: setup_loop_project(stack, name, split, scratch, options.batch) for name in ORDERINGS
    }
    for number in range(1, len(split.pool) // options.batch + 1):
        for project in projects.values():
            project.rounds.append(play_round(stack, project, number, scorer, options))
    return projects


def run_benchmark(options: BenchOptions) -> dict[str, Any]:
    """:func:`run_in_home` on a fresh temporary home, removed after success (kept on failure)."""
    home = Path(tempfile.mkdtemp(prefix="prelabel-learning-curve-"))
    try:
        result = run_in_home(options, home)
    except BaseException:
        logger.error("kept %s (service.log, worker.log, database) for inspection", home)
        raise
    shutil.rmtree(home, ignore_errors=True)
    return result


def run_in_home(options: BenchOptions, home: Path) -> dict[str, Any]:
    """Build the data, start service and worker, run the loop and the reference lines."""
    split = load_bench_dataset(options, home)
    config = training_config(options)
    test = [load_sample(item) for item in split.test]
    logger.info("%s: %d test, %d pool images in %s", split.name, len(test), len(split.pool), home)
    scorer = ServingScorer(home, test, split.schema)
    try:
        with running_stack(home, write_config(config, home)) as stack:
            projects = run_loop(stack, split, scorer, options)
            by_stem = {item.stem: item for item in split.pool}
            early = projects["random"].rounds[: options.static_rounds]
            first = [by_stem[stem] for r in early for stem in r["images"]]
            static = reference_line(stack, "static", split, first, scorer)
            loop_steps = max(sum(r["train_steps"] for r in p.rounds) for p in projects.values())
            upper_config = upper_bound_config(config, loop_steps)
            stack.restart_worker(write_config(upper_config, home, "upper-bound.yaml"))
            upper = reference_line(stack, "upper-bound", split, split.pool, scorer)
            references = {"static": static, "upper_bound": {**upper, "loop_steps": loop_steps}}
    finally:
        scorer.close()
    return {
        "dataset": split.name,
        "classes": len(split.schema.classes),
        "test_images": len(test),
        "pool_images": len(split.pool),
        "batch": options.batch,
        "static_rounds": options.static_rounds,
        "policy": loop_policy(options.batch),
        "config": config.model_dump(mode="json"),
        "self_training": options.self_training,
        "orderings": {name: {"rounds": p.rounds} for name, p in projects.items()},
        "references": references,
    }


# --- summary ------------------------------------------------------------------------------


def effort_saved(rounds: list[dict[str, Any]], key: str) -> float:
    """Share of the from-scratch effort (summed over the project) the drafts saved."""
    if key == "changed_pixels":
        done = sum(r["changed_pixels"] for r in rounds)
        scratch = sum(r["scratch_changed_pixels"] for r in rounds)
    else:
        done = sum(r[key] * len(r["images"]) for r in rounds)
        scratch = sum(r[f"scratch_{key}"] * len(r["images"]) for r in rounds)
    return 1.0 - done / scratch if scratch else 0.0


def first_round_reaching(rounds: list[dict[str, Any]], level: float | None) -> float | None:
    """The pool share of the first round whose test mIoU reaches ``level`` (None: never)."""
    if level is None:
        return None
    reached = [r for r in rounds if r["test_miou"] is not None and r["test_miou"] >= level]
    return float(reached[0]["pool_share"]) if reached else None


def largest_drop(mious: list[float | None]) -> float:
    """The largest fall of test mIoU from one round to the next (0 if it never falls)."""
    pairs = itertools.pairwise(mious)
    return max([0.0, *(a - b for a, b in pairs if a is not None and b is not None)])


def ordering_summary(rounds: list[dict[str, Any]], upper: float | None) -> dict[str, Any]:
    """Effort saved, budget to 90% of the upper bound, mIoU at 25% of the pool, drops."""
    at_budget = next((r for r in rounds if r["pool_share"] >= BUDGET_SHARE - 1e-9), rounds[-1])
    miou_at_budget = at_budget["test_miou"]
    drop = largest_drop([r["test_miou"] for r in rounds])
    cold = rounds[0]
    return {
        "effort_saved_pixels": effort_saved(rounds, "changed_pixels"),
        "effort_saved_regions": effort_saved(rounds, "changed_regions"),
        "effort_saved_strokes": effort_saved(rounds, "strokes"),
        "effort_saved_brush_strokes": effort_saved(rounds, "brush_strokes"),
        "strokes_below_scratch_from_round_3": all(
            r["strokes"] < r["scratch_strokes"] for r in rounds[STROKE_ROUNDS_EXEMPT:]
        ),
        "brush_strokes_below_scratch_from_round_3": all(
            r["brush_strokes"] < r["scratch_brush_strokes"] for r in rounds[STROKE_ROUNDS_EXEMPT:]
        ),
        "pool_share_to_90pct_upper_bound": first_round_reaching(
            rounds, MIOU_SHARE_TARGET * upper if upper else None
        ),
        "test_miou_at_25pct": miou_at_budget,
        "pool_share_at_25pct_round": at_budget["pool_share"],
        "ratio_to_upper_bound_at_25pct": miou_at_budget / upper
        if upper and miou_at_budget is not None
        else None,
        "final_test_miou": rounds[-1]["test_miou"],
        "max_drop": drop,
        "never_dropped": drop == 0.0,
        "cold_start_matches_scratch": cold["draft_model_version"] is None
        and cold["changed_pixels"] == cold["scratch_changed_pixels"]
        and cold["changed_regions"] == cold["scratch_changed_regions"]
        and cold["strokes"] == cold["scratch_strokes"]
        and cold["brush_strokes"] == cold["scratch_brush_strokes"],
    }


def compare_orderings(result: dict[str, Any], skip: int = 2) -> dict[str, Any]:
    """Uncertainty minus random test mIoU at each budget after the first ``skip`` rounds."""
    random_rounds = result["orderings"]["random"]["rounds"]
    uncertain_rounds = result["orderings"]["uncertainty"]["rounds"]
    gaps = [
        (u["corrected"], u["test_miou"] - r["test_miou"])
        for r, u in zip(random_rounds, uncertain_rounds, strict=True)
        if u["round"] > skip and u["test_miou"] is not None and r["test_miou"] is not None
    ]
    worse = [(n, gap) for n, gap in gaps if gap < 0]
    return {
        "miou_gap_by_budget": dict(gaps),
        "budgets_worse": len(worse),
        "budgets_compared": len(gaps),
        "largest_shortfall": max((-gap for _, gap in worse), default=0.0),
        "uncertainty_never_worse": not worse,
    }


def ordering_targets(summary: dict[str, Any]) -> dict[str, bool]:
    """The per-ordering targets of the issue, met or not."""
    ratio = summary["ratio_to_upper_bound_at_25pct"]
    return {
        "miou_at_25pct_ge_90pct_upper": ratio is not None and ratio >= MIOU_SHARE_TARGET,
        "effort_saved_pixels_ge_70pct": summary["effort_saved_pixels"] >= EFFORT_TARGET,
        "brush_strokes_below_scratch_from_round_3": summary[
            "brush_strokes_below_scratch_from_round_3"
        ],
        "test_miou_never_dropped": summary["never_dropped"],
    }


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """Per ordering summaries, the ordering comparison, and each target's verdict."""
    upper = result["references"]["upper_bound"]["test_miou"]
    per = {name: ordering_summary(o["rounds"], upper) for name, o in result["orderings"].items()}
    versus = compare_orderings(result)
    targets: dict[str, Any] = {name: ordering_targets(s) for name, s in per.items()}
    targets["uncertainty_ge_random_after_round_2"] = versus["uncertainty_never_worse"]
    return {"orderings": per, "uncertainty_vs_random": versus, "targets": targets}


# --- Markdown and plot --------------------------------------------------------------------


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def round_row(r: dict[str, Any]) -> str:
    """One Markdown table row of a round."""
    cells = [
        str(r["round"]),
        f"{r['corrected']} ({r['pool_share']:.0%})",
        _fmt(r["model_version"]),
        _fmt(r["test_miou"]),
        _fmt(r["draft_miou"]),
        f"{r['acceptance_rate']:.0%}",
        f"{r['changed_pixel_fraction']:.2%}",
        f"{r['strokes']:.1f} / {r['scratch_strokes']:.1f}",
        f"{r['brush_strokes']:.1f} / {r['scratch_brush_strokes']:.1f}",
        f"{r['train_steps']}",
        f"{r['train_s']:.0f}",
        f"{r['round_wall_s']:.0f}",
    ]
    return "| " + " | ".join(cells) + " |"


def rounds_table(rounds: list[dict[str, Any]]) -> list[str]:
    """A Markdown table of one ordering's rounds."""
    return [
        "| round | corrected | serving | test mIoU | draft mIoU | accepted | changed px "
        "| strokes/img (scratch) | brush strokes/img (scratch) | train steps | train s "
        "| round wall s |",
        "| ---: | ---: | :--- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *(round_row(r) for r in rounds),
    ]


CLICK_COLUMNS = (
    ("empty", "empty, GrabCut"),
    ("draft", "draft, GrabCut"),
    ("empty_model", "empty, model"),
    ("draft_model", "draft, model"),
)


def clicks_table(rounds: list[dict[str, Any]]) -> list[str]:
    """NoC@85 / NoC@90 per round, per start (empty, draft) and method (GrabCut, click model)."""
    rows = []
    for r in rounds:
        noc = r.get("clicks", {})
        cells = [
            f"{noc[key]['noc85']:.1f} / {noc[key]['noc90']:.1f}"
            if noc.get(key, {}).get("objects")
            else "n/a"
            for key, _ in CLICK_COLUMNS
        ]
        rows.append(f"| {r['round']} | {_fmt(r['model_version'])} | " + " | ".join(cells) + " |")
    return [
        "NoC@85 / NoC@90 (at most 20 clicks) by start and method:",
        "",
        "| round | serving | " + " | ".join(title for _, title in CLICK_COLUMNS) + " |",
        "| ---: | :--- |" + " ---: |" * len(CLICK_COLUMNS),
        *rows,
    ]


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The reference lines and the summary as Markdown bullet points."""
    refs, summary = result["references"], result["summary"]
    lines = [
        f"- upper bound (whole pool, {refs['upper_bound']['images']} images, one full run of "
        f"{refs['upper_bound']['loop_steps']} steps = the most a loop used in all its rounds): "
        f"test mIoU {_fmt(refs['upper_bound']['test_miou'])}",
        f"- static (first {result['static_rounds']} rounds, {refs['static']['images']} images, "
        f"never updated): test mIoU {_fmt(refs['static']['test_miou'])}",
    ]
    for name, s in summary["orderings"].items():
        share = s["pool_share_to_90pct_upper_bound"]
        lines.append(
            f"- {name}: effort saved {s['effort_saved_pixels']:.1%} of pixels, "
            f"{s['effort_saved_regions']:.1%} of regions, {s['effort_saved_strokes']:.1%} of "
            f"strokes, {s['effort_saved_brush_strokes']:.1%} of brush strokes (below scratch "
            f"from round 3: strokes {s['strokes_below_scratch_from_round_3']}, brush strokes "
            f"{s['brush_strokes_below_scratch_from_round_3']}); "
            f"90% of the upper bound after "
            f"{'never' if share is None else f'{share:.0%} of the pool'}; test mIoU at "
            f"{s['pool_share_at_25pct_round']:.0%} of the pool {_fmt(s['test_miou_at_25pct'])} "
            f"({_fmt(s['ratio_to_upper_bound_at_25pct'], 2)} of the upper bound); "
            f"never dropped: {s['never_dropped']} (largest drop {s['max_drop']:.3f})"
        )
    versus = summary["uncertainty_vs_random"]
    lines.append(
        f"- uncertainty vs random after round 2: worse at {versus['budgets_worse']} of "
        f"{versus['budgets_compared']} budgets "
        f"(largest shortfall {versus['largest_shortfall']:.3f})"
    )
    return lines


def markdown(result: dict[str, Any]) -> str:
    """``results.md``: a table per ordering, the reference lines, the summary."""
    hardware = result["hardware"]
    lines = [
        f"# Learning curve on {result['dataset']}",
        "",
        f"{result['date']}, {hardware['cpu_model']} ({hardware['usable_cores']} cores); "
        f"{result['pool_images']} pool images in rounds of {result['batch']}, "
        f"{result['test_images']} test images; quick: {result['quick']}; "
        f"total {result['total_s'] / 60:.1f} min.",
    ]
    for name, ordering in result["orderings"].items():
        lines += ["", f"## {name} order", "", *rounds_table(ordering["rounds"])]
        if any("clicks" in r for r in ordering["rounds"]):
            lines += ["", *clicks_table(ordering["rounds"])]
    lines += ["", "## Reference lines and summary", "", *summary_lines(result), ""]
    return "\n".join(lines)


PANELS = (
    ("test_miou", "test mIoU of the serving version"),
    ("acceptance_rate", "acceptance rate of the round's drafts"),
    ("changed_pixel_fraction", "changed-pixel fraction of the round's drafts"),
    ("brush_strokes", "brush strokes per draft (radius 2 px)"),
)


def plot_reference_lines(result: dict[str, Any], axes: Sequence[Any]) -> None:
    """Upper bound and static model on the mIoU panel; labeling from scratch on the effort one."""
    for key, style in (("upper_bound", "--"), ("static", ":")):
        reference = result["references"][key]
        if reference["test_miou"] is not None:
            label = f"{key.replace('_', ' ')} ({reference['images']} images)"
            axes[0].axhline(reference["test_miou"], linestyle=style, color="grey", label=label)
    upper = result["references"]["upper_bound"]["test_miou"]
    if upper is not None:
        label = f"{MIOU_SHARE_TARGET:.0%} of the upper bound"
        axes[0].axhline(MIOU_SHARE_TARGET * upper, linewidth=0.8, color="red", label=label)
    rounds = result["orderings"]["random"]["rounds"]
    scratch = _mean([r["scratch_changed_pixel_fraction"] for r in rounds])
    if scratch is not None:
        axes[2].axhline(scratch, linestyle="--", color="grey", label="from scratch (empty draft)")
    strokes = _mean([r["scratch_brush_strokes"] for r in rounds])
    if strokes is not None:
        axes[3].axhline(strokes, linestyle="--", color="grey", label="from scratch (empty draft)")


def plot(result: dict[str, Any], path: Path) -> None:
    """Three panels per round: test mIoU (with reference lines), acceptance, changed pixels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(20, 4.5))
    for name, ordering in result["orderings"].items():
        xs = [r["corrected"] for r in ordering["rounds"]]
        for ax, (key, _) in zip(axes, PANELS, strict=True):
            ys = [np.nan if r[key] is None else r[key] for r in ordering["rounds"]]
            ax.plot(xs, ys, marker="o", markersize=3, label=f"{name} order")
    plot_reference_lines(result, axes)
    axes[1].set_ylim(-0.02, 1.02)
    for ax, (_, title) in zip(axes, PANELS, strict=True):
        ax.set(title=title, xlabel="images corrected (end of round)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"prelabel learning curve: {result['dataset']}, rounds of {result['batch']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- entry points -------------------------------------------------------------------------


def resolve_options(
    data: str | None,
    out: Path,
    quick: bool,
    batch: int | None,
    pool_size: int | None,
    seed: int,
    self_training: bool = False,
    clicks: int = 0,
    click_model: bool = False,
) -> BenchOptions:
    """Options from the command line; ``--quick`` picks a small subset and a tiny config."""
    if quick:
        return BenchOptions(
            data=data or QUICK_DATA,
            out=out,
            quick=True,
            batch=batch or 8,
            pool_size=pool_size or 32,
            test_size=12,
            seed=seed,
            self_training=self_training,
            clicks=min(clicks, 2),
            click_model=click_model,
        )
    return BenchOptions(
        data=data or DEFAULT_DATA,
        out=out,
        batch=batch or 16,
        pool_size=pool_size,
        seed=seed,
        self_training=self_training,
        clicks=clicks,
        click_model=click_model,
    )


def write_outputs(result: dict[str, Any], out: Path) -> None:
    """``results.json``, ``results.md`` and ``learning_curve.png`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    write_result(result, out / "results.json")
    (out / "results.md").write_text(markdown(result))
    plot(result, out / "learning_curve.png")
    logger.info("wrote %s and %s", out / "results.md", out / "learning_curve.png")


def execute(options: BenchOptions) -> dict[str, Any]:
    """Run the benchmark and write its outputs; returns the result."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    started = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "learning_curve",
        **stamp(),
        "quick": options.quick,
        **run_benchmark(options),
    }
    result["total_s"] = time.perf_counter() - started
    result["summary"] = summarise(result)
    write_outputs(result, options.out)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m bench.learning_curve``."""
    parser = argparse.ArgumentParser(prog="python -m bench.learning_curve", description=__doc__)
    parser.add_argument(
        "--data", default=None, help=f"a dataset folder or one of {sorted(DATASET_BUILDERS)}"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--quick", action="store_true", help="small subset: a CI smoke test")
    parser.add_argument("--batch", type=int, default=None, help="images per round (16; quick 8)")
    parser.add_argument("--pool-size", type=int, default=None, help="cap on the pool size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--self-training", action="store_true", help="train on confident drafts too"
    )
    parser.add_argument(
        "--clicks",
        type=int,
        default=0,
        metavar="N",
        help="per round, NoC@85/90 of the click refinement on N test images (0: off; quick: ≤2)",
    )
    parser.add_argument(
        "--click-model",
        action="store_true",
        help="train the click model (guidance channels) and measure its NoC beside GrabCut's",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    options = resolve_options(
        args.data,
        args.out,
        args.quick,
        args.batch,
        args.pool_size,
        args.seed,
        args.self_training,
        args.clicks,
        args.click_model,
    )
    execute(options)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
