"""The learning-curve benchmark's --quick mode end to end: a real service and worker
(subprocesses) driven over HTTP on a small subset; checks that the pipeline ran and wrote
its files, never the numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.learning_curve import main

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROUND_KEYS = {
    "corrected",
    "model_version",
    "test_miou",
    "draft_miou",
    "acceptance_rate",
    "changed_pixel_fraction",
    "changed_regions",
    "strokes",
    "scratch_strokes",
    "brush_strokes",
    "scratch_brush_strokes",
    "train_steps",
    "train_s",
    "round_wall_s",
}


def test_quick_learning_curve_writes_results(tmp_path: Path) -> None:
    assert main(["--quick", "--out", str(tmp_path)]) == 0

    for name in ("results.json", "results.md", "learning_curve.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    result = json.loads((tmp_path / "results.json").read_text())
    assert set(result["orderings"]) == {"random", "uncertainty"}
    for ordering in result["orderings"].values():
        rounds = ordering["rounds"]
        assert len(rounds) == result["pool_images"] // result["batch"] >= 2
        assert all(set(r) >= ROUND_KEYS for r in rounds)
        assert [r["corrected"] for r in rounds] == [
            result["batch"] * n for n in range(1, len(rounds) + 1)
        ]
        # Cold start: no model, empty drafts, so the effort is exactly labeling from scratch.
        cold = rounds[0]
        assert cold["draft_model_version"] is None
        assert cold["changed_pixels"] == cold["scratch_changed_pixels"] > 0
        assert cold["changed_regions"] == cold["scratch_changed_regions"]
        assert cold["strokes"] == cold["scratch_strokes"] > 0
        assert cold["brush_strokes"] == cold["scratch_brush_strokes"] > 0
        assert cold["changed_pixel_fraction"] == pytest.approx(
            cold["scratch_changed_pixel_fraction"]
        )
        # The worker trained and promoted a first model after the first round.
        assert cold["model_version"] is not None and cold["test_miou"] is not None
    for reference in ("upper_bound", "static"):
        assert result["references"][reference]["model_version"] == "v1"
    # The upper bound trains at least as many steps as a loop used in all its rounds.
    upper = result["references"]["upper_bound"]
    loop_steps = max(
        sum(r["train_steps"] for r in o["rounds"]) for o in result["orderings"].values()
    )
    assert upper["loop_steps"] == loop_steps > 0
    assert upper["runs"][0]["steps"] >= loop_steps
    assert result["summary"]["orderings"]["random"]["cold_start_matches_scratch"]
    assert "hardware" in result and "versions" in result
    assert "## random order" in (tmp_path / "results.md").read_text()
