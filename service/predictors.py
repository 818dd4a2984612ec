"""Serving-model sessions, cached per (project, version) and pinned to the registry's sha256.

A request looks up the serving version in the database, then takes its
predictor from this cache: a newly promoted version is picked up by the next
request (no restart, every replica sees the same database), while requests
already running keep the predictor object they hold.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

from models.predictor import OnnxPredictor
from models.registry import ModelRecord
from models.serving import load_predictor
from models.tiling import Tiling
from prelabel.blobs import BlobStore

logger = logging.getLogger(__name__)


class PredictorCache:
    """A small LRU of ``OnnxPredictor`` objects keyed by project and model version."""

    def __init__(
        self,
        blobs: BlobStore,
        *,
        capacity: int = 4,
        threads: int = 0,
        tiling: Tiling | None = None,
    ) -> None:
        self.blobs = blobs
        self.capacity = capacity
        self.threads = threads
        self.tiling = tiling
        self._entries: OrderedDict[tuple[str, str], OnnxPredictor] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, record: ModelRecord) -> OnnxPredictor:
        """The predictor for ``record``, loading and checksum-verifying it on first use."""
        key = (record.project_id, record.version)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            predictor = load_predictor(self.blobs, record, threads=self.threads, tiling=self.tiling)
            self._entries[key] = predictor
            if len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
            return predictor

    def forget_project(self, project_id: str) -> None:
        """Drop the project's predictors (it was erased)."""
        with self._lock:
            for key in [k for k in self._entries if k[0] == project_id]:
                del self._entries[key]
