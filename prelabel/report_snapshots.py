"""The project-wide sections of the metrics, kept per process for a few seconds.

Every ``GET metrics`` reports, besides the numbers of the corrections its filters keep,
sections that describe the whole project now: the queue, the training runs, the serving
version's changes and the review measures (inter-annotator agreement included). They do
not depend on the filters, and their cost grows with the project; a dashboard polled by
many people recomputed them at every request. :class:`SectionsCache` computes them at
most once per ``max_age_s`` per project and process (concurrent misses compute once);
the filtered sections stay exact at every request. ``max_age_s`` 0 turns the cache off.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.orm import Session

from prelabel.blobs import BlobStore
from prelabel.projects import Project
from prelabel.report_sections import (
    QueueStatus,
    TrainingRunsSummary,
    VersionEvent,
    queue_status,
    training_runs_summary,
    version_events,
)
from prelabel.review_metrics import AgreementCache, ReviewMeasures, review_measures
from prelabel.single_flight import SingleFlight


@dataclass(frozen=True)
class ProjectWideSections:
    """What the metrics report about the whole project, whatever the filters."""

    queue: QueueStatus
    training_runs: TrainingRunsSummary
    version_events: tuple[VersionEvent, ...]
    review: ReviewMeasures
    computed_at: datetime
    """When the computation started (the sections are at least this old)."""


def project_wide_sections(
    session: Session, blobs: BlobStore, project: Project, agreement: AgreementCache | None = None
) -> ProjectWideSections:
    """The project-wide sections now (pair agreements kept in ``agreement`` when given)."""
    started = datetime.now(UTC)
    return ProjectWideSections(
        queue=queue_status(session, project),
        training_runs=training_runs_summary(session, project),
        version_events=tuple(version_events(session, project)),
        review=review_measures(session, blobs, project, agreement),
        computed_at=started,
    )


class SectionsCache:
    """Each project's :class:`ProjectWideSections`, recomputed once older than ``max_age_s``.

    :meth:`forget_project` drops a project's sections and starts a new generation of them:
    a computation that began before it is neither kept nor joined by later requests.
    """

    def __init__(self, max_age_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if max_age_s < 0:
            raise ValueError(f"max_age_s must be >= 0, got {max_age_s}")
        self.max_age_s = max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        self._kept: dict[str, tuple[float, ProjectWideSections]] = {}
        self._generations: dict[str, int] = {}
        self._in_flight: SingleFlight[tuple[str, int], ProjectWideSections] = SingleFlight()

    def sections(
        self, project_id: str, compute: Callable[[], ProjectWideSections]
    ) -> ProjectWideSections:
        """The project's sections: kept ones younger than ``max_age_s``, else ``compute()``."""
        if self.max_age_s == 0:
            return compute()
        with self._lock:
            fresh = self._fresh(project_id)
            generation = self._generations.get(project_id, 0)
        if fresh is not None:
            return fresh
        return self._in_flight.run(
            (project_id, generation),
            lambda: self._compute_and_keep(project_id, generation, compute),
        )

    def _fresh(self, project_id: str) -> ProjectWideSections | None:
        """The kept sections if younger than ``max_age_s`` (call with the lock held)."""
        kept = self._kept.get(project_id)
        if kept is None or self._clock() - kept[0] >= self.max_age_s:
            return None
        return kept[1]

    def _compute_and_keep(
        self, project_id: str, generation: int, compute: Callable[[], ProjectWideSections]
    ) -> ProjectWideSections:
        with self._lock:  # a computation that just ended may have kept fresh ones
            fresh = self._fresh(project_id)
            if fresh is not None and self._generations.get(project_id, 0) == generation:
                return fresh
        started = self._clock()
        sections = compute()
        with self._lock:
            if self._generations.get(project_id, 0) == generation:
                self._kept[project_id] = (started, sections)
        return sections

    def forget_project(self, project_id: str) -> None:
        """Drop the project's kept sections (its data changed in a way that must show now)."""
        with self._lock:
            self._kept.pop(project_id, None)
            self._generations[project_id] = self._generations.get(project_id, 0) + 1
