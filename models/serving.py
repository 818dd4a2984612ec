"""Serving a registered version: load its pinned artifact and produce stored drafts.

Used by the service (on request) and by bulk drafts jobs (``models.bulk``: after a
promotion or an upload, or asked for), so both make drafts the same way, and both
claim a draft before computing it (``prelabel.draft_claims``) so that no draft is
computed twice at once.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from sqlalchemy.orm import Session

from models.batching import Drafter
from models.precision import served_onnx
from models.predictor import OnnxPredictor, PredictorDevice, RuntimeOptions
from models.registry import ModelRecord
from models.tiling import Tiling
from prelabel.blobs import BlobStore, undo_puts_on_error
from prelabel.database import retry_on_busy, transaction, write_transaction
from prelabel.draft_claims import release_claim, try_claim
from prelabel.drafts import Draft, empty_draft, latest_draft, store_draft
from prelabel.errors import IntegrationError
from prelabel.images import Image, load_pixels
from prelabel.projects import Project
from prelabel.tables import new_id
from prelabel.workspace import Workspace

logger = logging.getLogger(__name__)


def load_predictor(
    blobs: BlobStore,
    record: ModelRecord,
    *,
    threads: int = 0,
    tiling: Tiling | None = None,
    device: PredictorDevice = "auto",
    runtime: RuntimeOptions | None = None,
) -> OnnxPredictor:
    """The onnxruntime predictor of ``record``, after checking the sha256 the registry pins.

    The artifact is the one of the version's chosen precision (``models.precision``):
    INT8 or FP16 where the training run adopted it, else the FP32 export. ``device``
    (``models.predictor.choose_providers``) counts unless ``runtime`` is given.

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
    return OnnxPredictor.from_bytes(
        data, threads=threads, tiling=tiling, device=device, runtime=runtime
    )


@dataclass(frozen=True)
class PredictedDraft:
    """A draft computed but not stored yet.

    Attributes:
        mask: (H, W) class ids of the image's size (uint8, or uint16 past 256 classes).
        confidence: (H, W) float32 in [0, 1], the probability of the chosen class.
        latency_ms: Reading, decoding and predicting, in milliseconds.
    """

    mask: npt.NDArray[np.integer]
    confidence: npt.NDArray[np.float32]
    latency_ms: float


def predict_draft(
    workspace: Workspace,
    project: Project,
    image: Image,
    serving: ModelRecord | None,
    predictor: Drafter | None,
    *,
    pixels: Future[npt.NDArray[np.uint8]] | None = None,
    started: float | None = None,
) -> PredictedDraft:
    """Predict the draft of ``image`` (or, without a model, the empty draft).

    ``pixels``: the image being read and decoded already (``started``: since when, a
    ``time.perf_counter()``); else it is read here.

    Raises:
        CodecError: the stored image cannot be decoded.
    """
    started = time.perf_counter() if started is None else started
    if serving is None or predictor is None:
        mask, confidence = empty_draft(project.label_schema, image.height, image.width)
    else:
        decoded = load_pixels(workspace.blobs, image) if pixels is None else pixels.result()
        prediction = predictor.predict(decoded)
        mask, confidence = prediction.mask, prediction.confidence
    return PredictedDraft(mask, confidence, (time.perf_counter() - started) * 1000)


def save_draft(
    workspace: Workspace,
    project: Project,
    image: Image,
    serving: ModelRecord | None,
    predicted: PredictedDraft,
    *,
    claim_holder: str | None = None,
) -> Draft:
    """Store a predicted draft, dropping ``claim_holder``'s claim on it in the same
    transaction (waiters see the draft when the claim goes).

    A try that finds SQLite busy is retried whole; the blobs of a failed try are removed.
    """

    def store() -> Draft:
        with (
            undo_puts_on_error(workspace.blobs) as blobs,
            transaction(workspace.sessions) as session,
        ):
            draft = store_draft(
                session,
                blobs,
                image=image,
                schema=project.label_schema,
                mask=predicted.mask,
                confidence=predicted.confidence,
                model_version=serving.version if serving else None,
                latency_ms=predicted.latency_ms,
            )
            if claim_holder is not None and serving is not None:
                release_claim(
                    session, image_id=image.id, model_version=serving.version, holder=claim_holder
                )
            return draft

    return retry_on_busy(store)


def make_draft(
    workspace: Workspace,
    project: Project,
    image: Image,
    serving: ModelRecord | None,
    predictor: Drafter | None,
) -> Draft:
    """Predict (or, without a model, make the empty draft) and store it with its latency."""
    predicted = predict_draft(workspace, project, image, serving, predictor)
    return save_draft(workspace, project, image, serving, predicted)


def draft_once(
    workspace: Workspace,
    project: Project,
    image: Image,
    serving: ModelRecord,
    predictor: Drafter,
    *,
    lease_s: float,
    poll_s: float = 0.02,
) -> Draft:
    """The stored draft of ``image`` by ``serving``, computed here only if nobody else is
    computing it: a person's request that finds the draft claimed (by a bulk job, another
    request, another replica) waits for it to be stored instead of computing it again.

    The claim is marked interactive, so bulk jobs yield while it lasts. A holder that
    died loses its claim after ``lease_s``; then this request takes over. The image is
    read and decoded on a second thread while the claim's transaction runs.
    """
    holder = f"request:{new_id()}"
    waited = False
    started = time.perf_counter()

    def claim_or_find(session: Session) -> tuple[bool, Draft | None]:
        # Claim first, then look: the draft may have been stored (and its claim
        # dropped) by another process between a look and a claim.
        won = try_claim(
            session,
            project_id=project.id,
            image_id=image.id,
            model_version=serving.version,
            holder=holder,
            interactive=True,
            lease_s=lease_s,
        )
        draft = latest_draft(session, image, model_version=serving.version)
        if won and draft is not None:
            release_claim(session, image_id=image.id, model_version=serving.version, holder=holder)
        return won, draft

    with _read_beside(workspace, image) as pixels:
        while True:
            won, draft = write_transaction(workspace.sessions, claim_or_find)
            if draft is not None:
                if waited:
                    logger.info("draft of image %s by %s: waited for it", image.id, serving.version)
                return draft
            if won:
                predicting = _Predicting(predictor, pixels, started)
                return _compute_claimed(workspace, project, image, serving, predicting, holder)
            if not waited:
                logger.info(
                    "draft of image %s by %s is being made: waiting", image.id, serving.version
                )
            waited = True
            time.sleep(poll_s)
            poll_s = min(poll_s * 1.5, 0.2)


@contextmanager
def _read_beside(workspace: Workspace, image: Image) -> Iterator[Future[npt.NDArray[np.uint8]]]:
    """The image read and decoded on a second thread (not waited for if unused)."""
    beside = ThreadPoolExecutor(max_workers=1, thread_name_prefix="draft-read")
    try:
        yield beside.submit(load_pixels, workspace.blobs, image)
    finally:
        beside.shutdown(wait=False)


@dataclass(frozen=True)
class _Predicting:
    """What a claimed draft is computed with: the predictor, and the image being decoded
    since ``started``."""

    predictor: Drafter
    pixels: Future[npt.NDArray[np.uint8]]
    started: float


def _compute_claimed(
    workspace: Workspace,
    project: Project,
    image: Image,
    serving: ModelRecord,
    predicting: _Predicting,
    holder: str,
) -> Draft:
    try:
        predicted = predict_draft(
            workspace,
            project,
            image,
            serving,
            predicting.predictor,
            pixels=predicting.pixels,
            started=predicting.started,
        )
        return save_draft(workspace, project, image, serving, predicted, claim_holder=holder)
    except BaseException:
        write_transaction(
            workspace.sessions,
            lambda session: release_claim(
                session, image_id=image.id, model_version=serving.version, holder=holder
            ),
        )
        raise
