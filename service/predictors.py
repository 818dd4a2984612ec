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

from models.batching import Drafter, DynamicBatcher
from models.click_model import ClickPredictor, interactive_artifact, load_click_predictor
from models.predictor import OnnxPredictor, RuntimeOptions
from models.registry import ModelRecord
from models.serving import load_predictor
from models.tiling import Tiling
from prelabel.blobs import BlobStore
from prelabel.drafts import Draft
from prelabel.settings import ServiceSettings
from prelabel.single_flight import SingleFlight

logger = logging.getLogger(__name__)


def runtime_options(settings: ServiceSettings) -> RuntimeOptions:
    """The onnxruntime session options the service settings ask for."""
    return RuntimeOptions(
        threads=settings.predictor_threads,
        inter_op_threads=settings.predictor_inter_op_threads,
        graph_optimization=settings.predictor_graph_optimization,
        execution_mode=settings.predictor_execution_mode,
        memory_pattern=settings.predictor_memory_pattern,
        cpu_arena=settings.predictor_cpu_arena,
        spinning=settings.predictor_spinning,
        device=settings.predictor_device,
    )


class PredictorCache:
    """A small LRU of ``OnnxPredictor`` objects keyed by project and model version.

    ``lease_s``: how long this process's claims on drafts it computes hold if it dies.

    With ``batch_window_s`` > 0, on-demand drafts go through one ``DynamicBatcher`` per
    predictor (``drafter``): concurrent drafts of one size share an onnxruntime run.
    """

    def __init__(
        self,
        blobs: BlobStore,
        *,
        capacity: int = 4,
        threads: int = 0,
        tiling: Tiling | None = None,
        lease_s: float = 60.0,
        runtime: RuntimeOptions | None = None,
        batch_window_s: float = 0.0,
        batch_max_images: int = 8,
    ) -> None:
        self.blobs = blobs
        self.lease_s = lease_s
        self.capacity = capacity
        self.threads = threads
        self.tiling = tiling
        self.runtime = runtime or RuntimeOptions(threads=threads)
        self.batch_window_s = batch_window_s
        self.batch_max_images = batch_max_images
        self._entries: OrderedDict[tuple[str, str], OnnxPredictor] = OrderedDict()
        self._batchers: dict[int, DynamicBatcher] = {}
        self._lock = threading.Lock()
        self._drafts_in_flight: SingleFlight[tuple[str, str | None], Draft] = SingleFlight()
        self._click_models: OrderedDict[tuple[str, str], ClickPredictor] = OrderedDict()

    def get(self, record: ModelRecord) -> OnnxPredictor:
        """The predictor for ``record``, loading and checksum-verifying it on first use."""
        key = (record.project_id, record.version)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            predictor = load_predictor(self.blobs, record, tiling=self.tiling, runtime=self.runtime)
            self._entries[key] = predictor
            if len(self._entries) > self.capacity:
                _, evicted = self._entries.popitem(last=False)
                self._batchers.pop(id(evicted), None)
            return predictor

    def drafter(self, record: ModelRecord) -> Drafter:
        """What makes ``record``'s on-demand drafts: its predictor, behind a batcher if on."""
        predictor = self.get(record)
        if self.batch_window_s <= 0:
            return predictor
        with self._lock:
            batcher = self._batchers.get(id(predictor))
            if batcher is None or batcher.predictor is not predictor:
                batcher = self._batchers[id(predictor)] = DynamicBatcher(
                    predictor, window_s=self.batch_window_s, max_batch=self.batch_max_images
                )
            return batcher

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

        def waiting() -> None:
            logger.info("draft of image %s by %s is being made: waiting for it", image_id, version)

        return self._drafts_in_flight.run((image_id, version), make, on_wait=waiting)

    def forget_project(self, project_id: str) -> None:
        """Drop the project's predictors (it was erased)."""
        with self._lock:
            for key in [k for k in self._entries if k[0] == project_id]:
                self._batchers.pop(id(self._entries.pop(key)), None)
            for key in [k for k in self._click_models if k[0] == project_id]:
                del self._click_models[key]
