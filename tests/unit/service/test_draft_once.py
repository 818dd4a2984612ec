"""Concurrent requests for one draft make it once; the others wait for its result."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from prelabel.blobs import LocalBlobStore
from service.predictors import PredictorCache


def test_concurrent_requests_for_one_draft_make_it_once(tmp_path: Path) -> None:
    cache = PredictorCache(LocalBlobStore(tmp_path))
    started, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def make() -> Any:
        calls.append("made")
        started.set()
        release.wait(10)
        return "the draft"

    with ThreadPoolExecutor(6) as pool:
        first = pool.submit(cache.make_once, "img", "v1", make)
        started.wait(10)
        others = [pool.submit(cache.make_once, "img", "v1", make) for _ in range(3)]
        other_image = pool.submit(cache.make_once, "img2", "v1", lambda: "another")
        assert other_image.result(10) == "another"  # other drafts are not held up
        time.sleep(1.0)  # let the three reach the wait (they must not make it themselves)
        release.set()
        answers = [f.result(10) for f in (first, *others)]
    assert answers == ["the draft"] * 4
    assert calls == ["made"]
    assert cache.make_once("img", "v1", lambda: "again") == "again"  # done: next one is fresh


def test_the_error_of_the_one_making_it_reaches_those_waiting(tmp_path: Path) -> None:
    cache = PredictorCache(LocalBlobStore(tmp_path))
    started, release = threading.Event(), threading.Event()

    def fail() -> Any:
        started.set()
        release.wait(10)
        raise ValueError("model broke")

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(cache.make_once, "img", None, fail)
        started.wait(10)
        waiting = pool.submit(cache.make_once, "img", None, lambda: "never")
        time.sleep(1.0)  # let it reach the wait
        release.set()
        for future in (first, waiting):
            with pytest.raises(ValueError, match="model broke"):
                future.result(10)
