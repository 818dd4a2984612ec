"""Serving-model sessions, cached per (project, version) and pinned to the registry's sha256;
and the drafts being made right now, so that concurrent requests for one draft make it once.

A request looks up the serving version in the database, then takes its
predictor from this cache: a newly promoted version is picked up by the next
request (no restart, every replica sees the same database), while requests
already running keep the predictor object they hold.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future

from models.predictor import OnnxPredictor, PredictorDevice
from models.registry import ModelRecord
from models.serving import load_predictor
from models.tiling import Tiling
from prelabel.blobs import BlobStore
from prelabel.drafts import Draft

logger = logging.getLogger(__name__)


class PredictorCache:
    """A small LRU of ``OnnxPredictor`` objects keyed by project and model version.

    ``lease_s``: how long this process's claims on drafts it computes hold if it dies.
    """

    def __init__(
        self,
        blobs: BlobStore,
        *,
        capacity: int = 4,
        threads: int = 0,
        tiling: Tiling | None = None,
        device: PredictorDevice = "auto",
        lease_s: float = 60.0,
    ) -> None:
        self.blobs = blobs
        self.lease_s = lease_s
        self.capacity = capacity
        self.threads = threads
        self.tiling = tiling
        self.device: PredictorDevice = device
        self._entries: OrderedDict[tuple[str, str], OnnxPredictor] = OrderedDict()
        self._lock = threading.Lock()
        self._in_flight: dict[tuple[str, str | None], Future[Draft]] = {}

    def get(self, record: ModelRecord) -> OnnxPredictor:
        """The predictor for ``record``, loading and checksum-verifying it on first use."""
        key = (record.project_id, record.version)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            predictor = load_predictor(
                self.blobs, record, threads=self.threads, tiling=self.tiling, device=self.device
            )
            self._entries[key] = predictor
            if len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
            return predictor

    def make_once(self, image_id: str, version: str | None, make: Callable[[], Draft]) -> Draft:
        """``make()`` the draft of an image by a version, unless a concurrent request is
        making it already: then wait for that one's result (or its error)."""
        key = (image_id, version)
        with self._lock:
            pending = self._in_flight.get(key)
            if pending is None:
                pending = self._in_flight[key] = Future()
                owner = True
            else:
                owner = False
        if not owner:
            logger.info("draft of image %s by %s is being made: waiting for it", image_id, version)
            return pending.result()
        try:
            draft = make()
        except BaseException as exc:
            pending.set_exception(exc)
            raise
        else:
            pending.set_result(draft)
            return draft
        finally:
            with self._lock:
                del self._in_flight[key]

    def forget_project(self, project_id: str) -> None:
        """Drop the project's predictors (it was erased)."""
        with self._lock:
            for key in [k for k in self._entries if k[0] == project_id]:
                del self._entries[key]
