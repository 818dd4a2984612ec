"""Serving a registered version: load its pinned artifact and produce stored drafts.

Used by the service (on request) and by the worker (precomputing drafts after a
promotion or an upload), so both make drafts the same way.
"""

from __future__ import annotations

import hashlib
import logging
import time

from models.batching import Drafter
from models.precision import served_onnx
from models.predictor import OnnxPredictor, RuntimeOptions
from models.registry import ModelRecord, serving_version
from models.tiling import Tiling
from prelabel.blobs import BlobStore
from prelabel.database import transaction
from prelabel.drafts import Draft, empty_draft, latest_draft, store_draft
from prelabel.errors import IntegrationError
from prelabel.images import Image, list_images, load_pixels
from prelabel.projects import Project
from prelabel.workspace import Workspace

logger = logging.getLogger(__name__)


def load_predictor(
    blobs: BlobStore,
    record: ModelRecord,
    *,
    threads: int = 0,
    tiling: Tiling | None = None,
    runtime: RuntimeOptions | None = None,
) -> OnnxPredictor:
    """The onnxruntime predictor of ``record``, after checking the sha256 the registry pins.

    The artifact is the one of the version's chosen precision (``models.precision``):
    INT8 or FP16 where the training run adopted it, else the FP32 export.

    Raises:
        IntegrationError: the stored artifact does not match its recorded checksum.
    """
    key, sha256 = served_onnx(record)
    data = blobs.get(key)
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise IntegrationError(
            f"artifact of model_version {record.version} has sha256 {digest[:12]}…, "
            f"the registry pins {sha256[:12]}…"
        )
    logger.info("loaded model_version %s of project %s", record.version, record.project_id)
    return OnnxPredictor.from_bytes(data, threads=threads, tiling=tiling, runtime=runtime)


def make_draft(
    workspace: Workspace,
    project: Project,
    image: Image,
    serving: ModelRecord | None,
    predictor: Drafter | None,
) -> Draft:
    """Predict (or, without a model, make the empty draft) and store it with its latency."""
    schema = project.label_schema
    started = time.perf_counter()
    if serving is None or predictor is None:
        mask, confidence = empty_draft(schema, image.height, image.width)
    else:
        prediction = predictor.predict(load_pixels(workspace.blobs, image))
        mask, confidence = prediction.mask, prediction.confidence
    latency_ms = (time.perf_counter() - started) * 1000
    with transaction(workspace.sessions) as session:
        return store_draft(
            session,
            workspace.blobs,
            image=image,
            schema=schema,
            mask=mask,
            confidence=confidence,
            model_version=serving.version if serving else None,
            latency_ms=latency_ms,
        )


def precompute_drafts(workspace: Workspace, project: Project, *, threads: int = 0) -> int:
    """Store the serving version's draft of every image that has no correction and no such draft.

    This is what makes drafts instant for annotation tools (and overnight bulk
    pre-labeling), and what the uncertainty ordering reads.

    Returns:
        How many drafts were made (0 when the project has no model).
    """
    with workspace.sessions() as session:
        serving = serving_version(session, project.id)
        if serving is None:
            return 0
        pending = [
            image
            for image in list_images(session, project.id)
            if not image.has_correction
            and latest_draft(session, image, model_version=serving.version) is None
        ]
    if not pending:
        return 0
    predictor = load_predictor(workspace.blobs, serving, threads=threads)
    for image in pending:
        make_draft(workspace, project, image, serving, predictor)
    logger.info(
        "precomputed %d drafts of project %s with %s", len(pending), project.id, serving.version
    )
    return len(pending)
