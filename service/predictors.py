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

from models.click_model import ClickPredictor, interactive_artifact, load_click_predictor
from models.predictor import OnnxPredictor
from models.registry import ModelRecord
from models.serving import load_predictor
from models.tiling import Tiling
from prelabel.blobs import BlobStore
from prelabel.drafts import Draft

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
        self._in_flight: dict[tuple[str, str | None], Future[Draft]] = {}
        self._click_models: OrderedDict[tuple[str, str], ClickPredictor] = OrderedDict()

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

    def click_model(self, record: ModelRecord) -> ClickPredictor | None:
        """The click model of ``record`` (checksum-verified on first use), None if it has none
        or its click model failed its gate."""
        artifact = interactive_artifact(record.config)
        if artifact is None or not artifact.serves:
            return None
        key = (record.project_id, record.version)
        with self._lock:
            if key in self._click_models:
                self._click_models.move_to_end(key)
                return self._click_models[key]
            model = load_click_predictor(self.blobs, artifact, threads=self.threads)
            self._click_models[key] = model
            if len(self._click_models) > self.capacity:
                self._click_models.popitem(last=False)
            logger.info("loaded click model of %s of project %s", key[1], key[0])
            return model

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
            for key in [k for k in self._click_models if k[0] == project_id]:
                del self._click_models[key]
