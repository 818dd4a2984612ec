"""Dynamic batching: concurrent drafts of one size share a run; a lone one waits ≤ the window."""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from models.batching import DynamicBatcher
from models.predictor import OnnxPredictor, Prediction, PredictorSpec
from tests.unit.models.test_predictor import write_conv_model

GREY = PredictorSpec(in_channels=1, stride=8, mean=(0.5,), std=(0.25,), classes=2)


class CountingPredictor(OnnxPredictor):
    """The real predictor, recording the size of each batch it runs."""

    batches: list[int]

    def predict_batch(
        self, images: Sequence[npt.NDArray[np.uint8]], *, max_batch: int = 8
    ) -> list[Prediction]:
        self.batches.append(len(images))
        return super().predict_batch(images, max_batch=max_batch)


@pytest.fixture
def predictor(tmp_path: Path) -> CountingPredictor:
    path = write_conv_model(tmp_path / "sign.onnx", np.array([[1.0], [-1.0]]), GREY)
    loaded = OnnxPredictor.from_path(path, threads=1)
    counting = CountingPredictor(loaded.session, loaded.spec, loaded.tiling)
    counting.batches = []
    return counting


def test_concurrent_drafts_of_one_size_share_one_run(predictor: CountingPredictor) -> None:
    batcher = DynamicBatcher(predictor, window_s=0.5, max_batch=4)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (30, 20), dtype=np.uint8) for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        drafts = list(pool.map(batcher.predict, images))
    assert predictor.batches == [4]  # full before the window ended: one run
    for image, draft in zip(images, drafts, strict=True):
        assert np.array_equal(draft.mask, predictor.predict(image).mask)


def test_a_lone_draft_waits_at_most_the_window(predictor: CountingPredictor) -> None:
    batcher = DynamicBatcher(predictor, window_s=0.2, max_batch=8)
    image = np.zeros((16, 16), dtype=np.uint8)
    started = time.perf_counter()
    batcher.predict(image)
    elapsed = time.perf_counter() - started
    assert predictor.batches == [1]
    assert 0.2 <= elapsed < 0.2 + 1.0  # the window, plus one tiny run


def test_different_sizes_are_not_batched_together(predictor: CountingPredictor) -> None:
    batcher = DynamicBatcher(predictor, window_s=0.3, max_batch=8)
    images = [np.zeros((16, 16), dtype=np.uint8), np.zeros((40, 16), dtype=np.uint8)]
    with ThreadPoolExecutor(2) as pool:
        drafts = list(pool.map(batcher.predict, images))
    assert sorted(predictor.batches) == [1, 1]
    assert [d.mask.shape for d in drafts] == [(16, 16), (40, 16)]


def test_an_error_reaches_every_request_of_the_batch(predictor: CountingPredictor) -> None:
    batcher = DynamicBatcher(predictor, window_s=0.3, max_batch=2)
    bad = np.zeros((16, 16), dtype=np.float32)
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(batcher.predict, bad) for _ in range(2)]  # type: ignore[arg-type]
        for future in futures:
            with pytest.raises(TypeError, match="uint8"):
                future.result(10)
