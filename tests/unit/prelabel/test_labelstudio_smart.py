"""Smart keypoints and rectangles (percent of the image) as clicks in pixels."""

from __future__ import annotations

import pytest

from prelabel.errors import ValidationFailed
from prelabel.integrations.labelstudio import SmartRegion, smart_clicks


def _region(kind: str, label: str, positive: bool = True, **value: float) -> SmartRegion:
    key = "keypointlabels" if kind == "keypointlabels" else "rectanglelabels"
    return SmartRegion.model_validate(
        {"type": kind, "value": {**value, key: [label]}, "is_positive": positive}
    )


def test_percentages_become_pixels_and_100_percent_is_the_last_pixel() -> None:
    regions = [
        _region("keypointlabels", "disk", x=0.0, y=50.0),
        _region("keypointlabels", "disk", False, x=100.0, y=99.9),
        _region("rectanglelabels", "disk", x=10.0, y=20.0, width=30.0, height=80.0),
    ]
    label, clicks = smart_clicks(regions, height=200, width=100)
    assert label == "disk"
    assert clicks.positive == [(0, 100)]
    assert clicks.negative == [(99, 199)]
    assert clicks.box == (10, 40, 40, 199)


def test_other_region_types_are_ignored_but_something_must_remain() -> None:
    other = SmartRegion.model_validate({"type": "choices", "value": {"x": 1, "y": 1}})
    with pytest.raises(ValidationFailed, match="no smart keypoint"):
        smart_clicks([other], height=10, width=10)
    with pytest.raises(ValidationFailed, match="not a percentage"):
        smart_clicks([_region("keypointlabels", "disk", x=-0.1, y=1)], height=10, width=10)
