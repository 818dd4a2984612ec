"""Known answers of the project report on the hand-built fixture (tests/dashboard_fixture.py)."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from sqlalchemy import event

from prelabel.errors import SchemaError, ValidationFailed
from prelabel.metrics import compare_masks
from prelabel.report_sections import (
    MetricsFilters,
    Period,
    annotator_table,
    changed_fraction_histogram,
    correction_records,
    corrections_csv,
    version_events,
)
from prelabel.reports import project_metrics
from prelabel.workspace import Workspace
from tests.dashboard_fixture import FixtureProject, build_fixture_project

IOU_C1 = (0.84 + 0.0) / 2
"""Draft all background, correction 84 background + 16 square pixels."""
IOU_C2 = (86 / 90 + 1.0 + 0.0) / 3
"""Background 86 of 90, disk exact, square (4 px) missed."""


@pytest.fixture
def fixture(workspace: Workspace) -> FixtureProject:
    return build_fixture_project(workspace)


def _report(workspace: Workspace, fixture: FixtureProject, **kwargs: object):  # type: ignore[no-untyped-def]
    period = kwargs.pop("period", Period.DAY)
    with workspace.sessions() as session:
        return project_metrics(
            session, fixture.project, MetricsFilters.model_validate(kwargs), period=period
        )


def test_empty_draft_baseline_is_recorded_with_each_comparison() -> None:
    import numpy as np

    correction = np.zeros((6, 6), np.uint8)
    correction[0:2, 0:2], correction[4:6, 4:6] = 1, 2
    correction[5, 0] = 255
    result = compare_masks(
        np.zeros_like(correction),
        correction,
        num_classes=3,
        ignore_index=255,
        acceptance_threshold=0.0,
        background_id=0,
    )
    assert (result.scratch_changed_pixels, result.scratch_changed_regions) == (8, 2)
    without = compare_masks(
        correction, correction, num_classes=3, ignore_index=255, acceptance_threshold=0.0
    )
    assert without.scratch_changed_pixels is None


def test_overall_effort_and_turnaround(workspace: Workspace, fixture: FixtureProject) -> None:
    report = _report(workspace, fixture)
    assert report.overall.corrections == 4
    assert report.overall.acceptance_rate == 0.5
    assert report.overall.mean_iou == pytest.approx((1.0 + IOU_C1 + IOU_C2 + 1.0) / 4)
    effort = report.effort_saved
    assert (effort.draft_changed_pixels, effort.empty_draft_changed_pixels) == (20, 40)
    assert (effort.saved_pixels, effort.saved_pixel_fraction) == (20, 0.5)
    assert (effort.draft_changed_regions, effort.empty_draft_changed_regions) == (2, 5)
    assert (effort.saved_regions, effort.not_measured) == (3, 0)
    assert "empty draft" in report.effort_method
    draft_to_correction = report.turnaround.draft_to_correction_s
    assert (draft_to_correction.p50, draft_to_correction.p90) == (3600.0, pytest.approx(6120.0))
    upload_to_draft = report.turnaround.upload_to_draft_s
    assert upload_to_draft.p50 == pytest.approx(98100.0)
    assert upload_to_draft.p90 == pytest.approx(483120.0)


def test_daily_series_with_empty_days_and_version_events(
    workspace: Workspace, fixture: FixtureProject
) -> None:
    series = _report(workspace, fixture).time_series
    assert [p.start for p in series.points] == [date(2025, 3, d) for d in range(3, 11)]
    assert [p.corrections for p in series.points] == [2, 0, 1, 0, 0, 0, 0, 1]
    first, empty = series.points[0], series.points[1]
    assert first.acceptance_rate == 0.5
    assert first.mean_changed_pixel_fraction == pytest.approx(0.08)
    assert first.mean_changed_regions == 0.5
    assert first.mean_iou == pytest.approx((1.0 + IOU_C1) / 2)
    assert first.mean_lead_time_s == 45.0
    assert first.effort_saved.saved_pixels == 9
    assert first.turnaround.draft_to_correction_s.p50 == 4500.0
    assert empty.acceptance_rate is None and empty.effort_saved.saved_pixels == 0
    assert [(e.version, e.previous, e.at.day) for e in series.version_events] == [
        ("v1", None, 3),
        ("v2", "v1", 5),
    ]


def test_weekly_series(workspace: Workspace, fixture: FixtureProject) -> None:
    series = _report(workspace, fixture, period=Period.WEEK).time_series
    assert [(p.start, p.corrections) for p in series.points] == [
        (date(2025, 3, 3), 3),
        (date(2025, 3, 10), 1),
    ]
    assert series.points[0].acceptance_rate == pytest.approx(1 / 3)
    assert series.points[1].acceptance_rate == 1.0


@pytest.mark.parametrize(
    ("filters", "kept"),
    [
        ({"annotator": "ana"}, [0, 2]),
        ({"model_version": "v1"}, [0, 1]),
        ({"model_version": "none"}, []),
        ({"class_id": 2}, [1, 2]),
        ({"since": "2025-03-05"}, [2, 3]),
        ({"until": "2025-03-04"}, [0, 1]),
        ({"since": "2025-03-05", "until": "2025-03-05", "annotator": "ana"}, [2]),
    ],
)
def test_filters_keep_the_expected_corrections(
    workspace: Workspace, fixture: FixtureProject, filters: dict[str, object], kept: list[int]
) -> None:
    with workspace.sessions() as session:
        records = correction_records(
            session, fixture.project, MetricsFilters.model_validate(filters)
        )
    assert [r.id for r in records] == [fixture.corrections[i] for i in kept]
    assert _report(workspace, fixture, **filters).overall.corrections == len(kept)


def test_queue_and_training_runs(workspace: Workspace, fixture: FixtureProject) -> None:
    report = _report(workspace, fixture)
    queue = report.queue
    assert (queue.images, queue.corrected, queue.queue_length) == (6, 4, 2)
    assert (queue.serving_version, queue.drafts_precomputed, queue.drafts_missing) == ("v2", 1, 1)
    runs = report.training_runs
    assert runs.by_outcome == {"failed": 1, "promoted": 2, "rejected": 1, "running": 1}
    running = runs.recent[0]
    assert running.outcome == "running" and running.progress == {"epoch": 2, "epochs": 5}


def test_bad_filters_are_refused(workspace: Workspace, fixture: FixtureProject) -> None:
    with pytest.raises(ValidationFailed, match="2025-03-06 is after until 2025-03-05"):
        _report(workspace, fixture, since="2025-03-06", until="2025-03-05")
    with pytest.raises(SchemaError, match="class id 7"):
        _report(workspace, fixture, class_id=7)


def test_csv_has_one_row_per_correction(workspace: Workspace, fixture: FixtureProject) -> None:
    with workspace.sessions() as session:
        records = correction_records(session, fixture.project, MetricsFilters())
    lines = corrections_csv(records).splitlines()
    header = lines[0].split(",")
    assert len(lines) == 5
    row = dict(zip(header, lines[2].split(","), strict=True))
    assert row["correction_id"] == fixture.corrections[1]
    assert row["image_filename"] == "img1.png" and row["annotator"] == "bo"
    assert row["model_version"] == "v1" and row["accepted"] == "false"
    assert (row["changed_pixels"], row["empty_draft_changed_pixels"]) == ("16", "16")
    assert row["lead_time_s"] == "60.0" and row["draft_to_correction_s"] == "7200.0"
    assert row["corrected_at"] == "2025-03-03T11:30:00+00:00"


def test_annotator_table_and_histogram(workspace: Workspace, fixture: FixtureProject) -> None:
    with workspace.sessions() as session:
        records = correction_records(session, fixture.project, MetricsFilters())
    rows = annotator_table(records)
    assert [(r.annotator, r.corrections, r.acceptance_rate) for r in rows] == [
        ("ana", 2, 0.5),
        ("bo", 2, 0.5),
    ]
    assert [r.median_lead_time_s for r in rows] == [25.0, 35.0]
    # changed-pixel fractions 0, 0.16, 0.04, 0
    assert changed_fraction_histogram(records, bins=10) == [3, 1] + [0] * 8
    assert changed_fraction_histogram(records, bins=5) == [4, 0, 0, 0, 0]


def test_version_events_read_the_action_index_not_every_event(
    workspace: Workspace, fixture: FixtureProject
) -> None:
    """Each draft served is an audit event: walking them all at every metrics request made
    the metrics slow down as a project ran (SQLite picks the time-ordered project index
    when the query sorts)."""
    if workspace.engine.dialect.name != "sqlite":
        pytest.skip("the plan checked is SQLite's")
    statements: list[tuple[str, Any]] = []

    def keep(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        statements.append((statement, parameters))

    with workspace.sessions() as session:
        event.listen(workspace.engine, "before_cursor_execute", keep)
        try:
            version_events(session, fixture.project)
        finally:
            event.remove(workspace.engine, "before_cursor_execute", keep)
        [(statement, parameters)] = statements
        plan = session.connection().exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)
        assert "ix_audit_events_action" in " ".join(str(row[-1]) for row in plan)
