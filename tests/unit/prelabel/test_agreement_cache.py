"""The inter-annotator comparison cache: computed once per pair, bounded, oldest use out."""

from __future__ import annotations

import numpy as np
import pytest

from prelabel.metrics import DraftComparison, compare_masks
from prelabel.review_metrics import AgreementCache


def _comparison(rows: int) -> DraftComparison:
    first, second = np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8)
    second[:rows] = 1
    return compare_masks(first, second, num_classes=2, ignore_index=255, acceptance_threshold=0.9)


def test_each_pair_is_computed_once_and_the_least_recently_used_leaves() -> None:
    cache = AgreementCache(capacity=2)
    computed: list[str] = []

    def compute(name: str, rows: int) -> DraftComparison:
        computed.append(name)
        return _comparison(rows)

    a = cache.comparison(("a", "b"), lambda: compute("ab", 1))
    assert cache.comparison(("a", "b"), lambda: compute("ab", 3)) == a
    cache.comparison(("c", "d"), lambda: compute("cd", 2))
    cache.comparison(("a", "b"), lambda: compute("ab", 3))  # used: ("c", "d") is now oldest
    cache.comparison(("e", "f"), lambda: compute("ef", 2))
    assert len(cache) == 2 and computed == ["ab", "cd", "ef"]
    cache.comparison(("c", "d"), lambda: compute("cd", 2))
    assert computed == ["ab", "cd", "ef", "cd"]
    with pytest.raises(ValueError, match="capacity"):
        AgreementCache(capacity=0)
