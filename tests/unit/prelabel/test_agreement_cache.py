"""The inter-annotator agreement cache: computed once per pair (also when requests
miss it together), bounded, oldest use out."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from prelabel.metrics import MaskAgreement, mask_agreement
from prelabel.review_metrics import AgreementCache


def _agreement(rows: int) -> MaskAgreement:
    first, second = np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8)
    second[:rows] = 1
    return mask_agreement(first, second, num_classes=2, ignore_index=255)


def test_each_pair_is_computed_once_and_the_least_recently_used_leaves() -> None:
    cache = AgreementCache(capacity=2)
    computed: list[str] = []

    def compute(name: str, rows: int) -> MaskAgreement:
        computed.append(name)
        return _agreement(rows)

    a = cache.agreement(("a", "b"), lambda: compute("ab", 1))
    assert cache.agreement(("a", "b"), lambda: compute("ab", 3)) == a
    cache.agreement(("c", "d"), lambda: compute("cd", 2))
    cache.agreement(("a", "b"), lambda: compute("ab", 3))  # used: ("c", "d") is now oldest
    cache.agreement(("e", "f"), lambda: compute("ef", 2))
    assert len(cache) == 2 and computed == ["ab", "cd", "ef"]
    cache.agreement(("c", "d"), lambda: compute("cd", 2))
    assert computed == ["ab", "cd", "ef", "cd"]
    with pytest.raises(ValueError, match="capacity"):
        AgreementCache(capacity=0)


def test_requests_missing_the_same_pair_at_once_compute_it_once() -> None:
    cache = AgreementCache()
    started, release = threading.Event(), threading.Event()
    computed: list[int] = []

    def slow() -> MaskAgreement:
        computed.append(1)
        started.set()
        assert release.wait(10)
        return _agreement(2)

    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(cache.agreement, ("a", "b"), slow)
        assert started.wait(10)
        others = [pool.submit(cache.agreement, ("a", "b"), slow) for _ in range(3)]
        release.set()
        results = [first.result(10)] + [other.result(10) for other in others]
    assert computed == [1]
    assert all(result == _agreement(2) for result in results)
