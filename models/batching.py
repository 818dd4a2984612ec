"""Dynamic batching: concurrent drafts of one size share one onnxruntime run.

The first request for a padded size opens a group and waits at most ``window_s`` for
others of the same size (less if the group fills up to ``max_batch``); then it runs the
whole group in one ``predict_batch`` and hands each request its own prediction. A lone
request is thus delayed by at most the window; later arrivals wait only for the rest of
it. Images that are tiled are never batched. Off (``window_s`` 0) where it brings no
gain: see the README's draft benchmark.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from models.predictor import OnnxPredictor, Prediction, padded_size


class Drafter(Protocol):
    """Anything that drafts one image: an ``OnnxPredictor`` or a ``DynamicBatcher``."""

    def predict(self, image: npt.NDArray[np.uint8]) -> Prediction:
        """Mask and confidence of one (H, W[, C]) uint8 image."""
        ...


@dataclass
class _Group:
    images: list[npt.NDArray[np.uint8]] = field(default_factory=list)
    results: list[Future[Prediction]] = field(default_factory=list)
    full: threading.Event = field(default_factory=threading.Event)


class DynamicBatcher:
    """Batches concurrent ``predict`` calls of one padded size within a time window."""

    def __init__(self, predictor: OnnxPredictor, *, window_s: float, max_batch: int) -> None:
        """Wrap ``predictor``; ``window_s`` > 0 and ``max_batch`` >= 1 (checked)."""
        if window_s <= 0 or max_batch < 1:
            raise ValueError(
                f"batching needs window_s > 0 and max_batch >= 1, got {window_s}, {max_batch}"
            )
        self.predictor = predictor
        self.window_s = window_s
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._open: dict[tuple[int, int], _Group] = {}

    def predict(self, image: npt.NDArray[np.uint8]) -> Prediction:
        """Draft ``image``, in one run with the concurrent requests of its padded size.

        Raises:
            TypeError, ValueError: as ``OnnxPredictor.predict`` (for every image of the group).
        """
        height, width = image.shape[:2]
        if self.predictor.tiling.applies(height, width):
            return self.predictor.predict(image)
        key = padded_size(height, width, self.predictor.spec.stride)
        result: Future[Prediction] = Future()
        with self._lock:
            group = self._open.get(key)
            leader = group is None
            if group is None:
                group = self._open[key] = _Group()
            group.images.append(image)
            group.results.append(result)
            if len(group.images) >= self.max_batch:
                del self._open[key]
                group.full.set()
        if leader:
            self._lead(key, group)
        return result.result()

    def _lead(self, key: tuple[int, int], group: _Group) -> None:
        group.full.wait(self.window_s)
        with self._lock:
            if self._open.get(key) is group:
                del self._open[key]
        try:
            predictions = self.predictor.predict_batch(group.images, max_batch=self.max_batch)
        except BaseException as exc:  # every waiting request gets the error, then re-raised
            for waiting in group.results:
                waiting.set_exception(exc)
            raise
        for waiting, prediction in zip(group.results, predictions, strict=True):
            waiting.set_result(prediction)
