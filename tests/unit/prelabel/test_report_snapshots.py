"""``SectionsCache``: a project's project-wide metrics sections, kept for ``max_age_s``."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest

from prelabel.report_sections import QueueStatus, TrainingRunsSummary
from prelabel.report_snapshots import ProjectWideSections, SectionsCache
from prelabel.review_metrics import InterAnnotatorAgreement, ReviewMeasures


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _sections(images: int) -> ProjectWideSections:
    return ProjectWideSections(
        queue=QueueStatus(
            images=images,
            corrected=0,
            queue_length=images,
            serving_version=None,
            drafts_precomputed=0,
            drafts_missing=images,
        ),
        training_runs=TrainingRunsSummary(by_outcome={}, recent=[]),
        version_events=(),
        review=ReviewMeasures(
            review_required=False,
            current_by_status={},
            by_annotator={},
            by_reviewer={},
            inter_annotator=InterAnnotatorAgreement(images=0, pairs=0, mean_iou=None, by_class={}),
        ),
        computed_at=datetime.now(UTC),
    )


class Counting:
    """A compute function that counts its calls; each call reports one more image."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> ProjectWideSections:
        self.calls += 1
        return _sections(self.calls)


def test_sections_are_kept_until_they_are_max_age_old() -> None:
    clock, compute = Clock(), Counting()
    cache = SectionsCache(5.0, clock=clock)
    assert cache.sections("p", compute).queue.images == 1
    clock.now += 4.9
    assert cache.sections("p", compute).queue.images == 1
    assert cache.sections("other", compute).queue.images == 2  # kept per project
    clock.now += 0.1
    assert cache.sections("p", compute).queue.images == 3
    assert compute.calls == 3


def test_max_age_zero_computes_every_time_and_forget_drops_a_project() -> None:
    compute = Counting()
    uncached = SectionsCache(0.0)
    assert [uncached.sections("p", compute).queue.images for _ in range(3)] == [1, 2, 3]
    cache = SectionsCache(60.0)
    assert cache.sections("p", compute).queue.images == 4
    cache.forget_project("p")
    assert cache.sections("p", compute).queue.images == 5
    with pytest.raises(ValueError, match="max_age_s"):
        SectionsCache(-1.0)


def test_concurrent_misses_compute_once() -> None:
    release, started = threading.Event(), threading.Event()
    compute = Counting()

    def slow() -> ProjectWideSections:
        started.set()
        release.wait(5)
        return compute()

    cache = SectionsCache(60.0)
    seen: list[int] = []
    threads = [
        threading.Thread(target=lambda: seen.append(cache.sections("p", slow).queue.images))
        for _ in range(4)
    ]
    threads[0].start()
    started.wait(5)
    for thread in threads[1:]:
        thread.start()
    time.sleep(0.2)  # the others reach the cache while the first still computes
    release.set()
    for thread in threads:
        thread.join(5)
    assert seen == [1, 1, 1, 1] and compute.calls == 1


def test_a_computation_running_when_the_project_is_forgotten_is_not_kept_or_joined() -> None:
    """An erasure during a computation: that computation's (older) answer goes to the
    requests that asked before it, never to later ones."""
    release, started = threading.Event(), threading.Event()

    def before_erasure() -> ProjectWideSections:
        started.set()
        release.wait(5)
        return _sections(6)

    cache = SectionsCache(60.0)
    seen: list[int] = []
    first = threading.Thread(
        target=lambda: seen.append(cache.sections("p", before_erasure).queue.images)
    )
    first.start()
    started.wait(5)
    cache.forget_project("p")
    # Asked after the erasure while the old computation runs: computes anew, not joins it.
    assert cache.sections("p", lambda: _sections(5)).queue.images == 5
    release.set()
    first.join(5)
    assert seen == [6]
    assert cache.sections("p", lambda: _sections(4)).queue.images == 5  # the new one is kept
