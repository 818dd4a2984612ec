"""Serving-model sessions, cached per (project, version) and pinned to the registry's sha256.

A request looks up the serving version in the database, then takes its
predictor from this cache: a newly promoted version is picked up by the next
request (no restart, every replica sees the same database), while requests
already running keep the predictor object they hold.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict

from models.predictor import OnnxPredictor
from models.registry import ModelRecord
from prelabel.blobs import BlobStore
from prelabel.errors import IntegrationError

logger = logging.getLogger(__name__)


class PredictorCache:
    """A small LRU of ``OnnxPredictor`` objects keyed by project and model version."""

    def __init__(self, blobs: BlobStore, *, capacity: int = 4, threads: int = 0) -> None:
        self.blobs = blobs
        self.capacity = capacity
        self.threads = threads
        self._entries: OrderedDict[tuple[str, str], OnnxPredictor] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, record: ModelRecord) -> OnnxPredictor:
        """The predictor for ``record``, loading and checksum-verifying it on first use."""
        key = (record.project_id, record.version)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            data = self.blobs.get(record.onnx_key)
            digest = hashlib.sha256(data).hexdigest()
            if digest != record.onnx_sha256:
                raise IntegrationError(
                    f"artifact of model_version {record.version} has sha256 "
                    f"{digest[:12]}…, registry pins {record.onnx_sha256[:12]}…"
                )
            predictor = OnnxPredictor.from_bytes(data, threads=self.threads)
            self._entries[key] = predictor
            if len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
            logger.info("loaded model_version %s of project %s", record.version, record.project_id)
            return predictor
