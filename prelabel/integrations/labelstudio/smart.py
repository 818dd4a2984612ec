"""Label Studio interactive pre-annotations: smart keypoints and rectangles become clicks.

With the ML backend connected as interactive (``is_interactive``) and ``smart="true"``
``<KeyPointLabels>`` / ``<RectangleLabels>`` in the config, Label Studio posts
``/predict`` with ``params.context.result``: every smart region of one type, label
and image so far, coordinates in percent of the image, keypoints with
``is_positive`` (Alt-click: negative). The answer is one ``brushlabels`` region of
the label's class, refined from the project's draft.

Pure pydantic and arithmetic; no HTTP.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from prelabel.errors import SchemaError, ValidationFailed
from prelabel.integrations.labelstudio.brush import BrushRegion, BrushValue, encode_brush
from prelabel.integrations.labelstudio.label_config import LabelMapping
from prelabel.integrations.labelstudio.payloads import LsRegion
from prelabel.refinement import Clicks
from prelabel.refinements import resolve_class
from prelabel.schema import LabelSchema

_LOOSE = ConfigDict(extra="ignore")


class SmartValue(BaseModel):
    model_config = _LOOSE

    x: float
    y: float
    width: float | None = None
    height: float | None = None
    keypointlabels: list[str] | None = None
    rectanglelabels: list[str] | None = None


class SmartRegion(LsRegion):
    """One smart region of ``params.context.result`` (keypoint or rectangle)."""

    value: SmartValue
    is_positive: bool = True

    def labels(self) -> list[str]:
        return (self.value.keypointlabels or []) + (self.value.rectanglelabels or [])


class SmartContext(BaseModel):
    model_config = _LOOSE

    result: list[SmartRegion] = Field(default_factory=list)


class PredictParams(BaseModel):
    """``params`` of ``/predict``: ``context`` is null except for interactive calls."""

    model_config = _LOOSE

    context: SmartContext | None = None


def _pixel(percent: float, size: int, what: str) -> int:
    """A percent coordinate as a pixel index; 100% is the last pixel."""
    if not math.isfinite(percent) or not 0.0 <= percent <= 100.0:
        raise ValidationFailed(f"{what} {percent!r} is not a percentage in 0..100")
    return min(math.floor(percent * size / 100.0), size - 1)


def smart_clicks(regions: list[SmartRegion], *, height: int, width: int) -> tuple[str, Clicks]:
    """The label and the clicks (pixels) of an interactive call's smart regions.

    Keypoints are clicks (``is_positive``); a rectangle is the box (the last one
    wins, as Label Studio sends one at a time). All regions must carry the same
    single label.

    Raises:
        ValidationFailed: no keypoint or rectangle, several labels, a coordinate
            outside 0..100 %.
    """
    positive: list[tuple[int, int]] = []
    negative: list[tuple[int, int]] = []
    box: tuple[int, int, int, int] | None = None
    labels: set[str] = set()
    for region in regions:
        kind = region.type.casefold()
        if kind not in ("keypointlabels", "rectanglelabels"):
            continue
        labels.update(region.labels())
        x = _pixel(region.value.x, width, "x")
        y = _pixel(region.value.y, height, "y")
        if kind == "keypointlabels":
            (positive if region.is_positive else negative).append((x, y))
            continue
        right = region.value.x + (region.value.width or 0.0)
        bottom = region.value.y + (region.value.height or 0.0)
        box = (x, y, _pixel(right, width, "x + width"), _pixel(bottom, height, "y + height"))
    if not positive and not negative and box is None:
        raise ValidationFailed("the interactive call holds no smart keypoint or rectangle")
    if len(labels) != 1:
        raise ValidationFailed(
            f"smart regions must carry exactly one label, got {sorted(labels) or 'none'}"
        )
    return labels.pop(), Clicks(positive=positive, negative=negative, box=box)


def smart_class(label: str, mapping: LabelMapping, schema: LabelSchema) -> int:
    """The class of a smart region's label: the brush label of that name, else the class
    with that name or translation, which must have a brush label (the answer is a brush
    region of it; checked before anything is refined and recorded).

    Raises:
        SchemaError: the label names no class, or a class without a brush label.
        ValidationFailed: the label is no brush label and names the background class.
    """
    for brush_label, class_id in mapping.classes.items():
        if brush_label.casefold() == label.strip().casefold():
            return class_id
    class_id = resolve_class(schema, class_id=None, label=label)
    _brush_label(mapping, class_id)
    return class_id


def _brush_label(mapping: LabelMapping, class_id: int) -> str:
    """The config's brush label of ``class_id``; raises SchemaError if it has none."""
    label = mapping.label_of(class_id)
    if label is None:
        raise SchemaError(
            f"class {class_id} has no label in <BrushLabels name={mapping.from_name!r}>: "
            f"its labels are {sorted(mapping.classes)}"
        )
    return label


def refined_region(
    mask: npt.NDArray[np.integer], class_id: int, *, mapping: LabelMapping, region_id: str
) -> BrushRegion:
    """The one ``brushlabels`` region an interactive call answers: the class in ``mask``.

    Its ``score`` is 1: the annotator asked for this region (GrabCut gives no probability).

    Raises:
        SchemaError: no brush label of the config maps to ``class_id``.
    """
    label = _brush_label(mapping, class_id)
    height, width = mask.shape
    return BrushRegion(
        id=region_id,
        from_name=mapping.from_name,
        to_name=mapping.to_name,
        original_width=width,
        original_height=height,
        value=BrushValue(rle=encode_brush(mask == class_id), brushlabels=[label]),
        score=1.0,
    )
