"""CVAT interactor calls: the request CVAT sends on each click, and the mask and polygon it wants.

An interactor function (``type: interactor`` in ``function.yaml``) receives
``{"image": <base64>, "pos_points": [[x, y], ...], "neg_points": [...],
"obj_bbox": [[x1, y1], [x2, y2]] | null}`` in pixels (CVAT sends every click of the
interaction again each time) and answers ``{"mask": [[0|1, ...], ...]}``, the
whole image as rows, with ``"points"``, the object's outline as a polygon
(cvat-ai/cvat ``serverless/pytorch/saic-vul/hrnet``). CVAT sends no label: the
function stands for one class.

Everything here is numpy, OpenCV and pydantic; no HTTP.
"""

from __future__ import annotations

import base64
import math

import cv2
import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from prelabel.errors import CodecError, ValidationFailed
from prelabel.refinement import MAX_CLICKS_PER_KIND, Clicks


class InteractorRequest(BaseModel):
    """The body CVAT posts to an interactor function."""

    model_config = ConfigDict(extra="ignore")

    image: str = Field(description="the encoded image (PNG, JPEG, ...), base64")
    pos_points: list[tuple[float, float]] = Field(
        default_factory=list, max_length=MAX_CLICKS_PER_KIND
    )
    neg_points: list[tuple[float, float]] = Field(
        default_factory=list, max_length=MAX_CLICKS_PER_KIND
    )
    obj_bbox: tuple[tuple[float, float], tuple[float, float]] | None = None

    def image_bytes(self) -> bytes:
        """The decoded image bytes; raises CodecError if ``image`` is not base64."""
        try:
            return base64.b64decode(self.image, validate=True)
        except ValueError as exc:  # binascii.Error, or characters outside ASCII
            raise CodecError(f"'image' is not valid base64: {exc}") from exc

    def clicks(self) -> Clicks:
        """The clicks in whole pixels (CVAT sends the canvas's sub-pixel coordinates)."""
        box = None
        if self.obj_bbox is not None:
            (x1, y1), (x2, y2) = self.obj_bbox
            box = (
                _pixel(min(x1, x2)),
                _pixel(min(y1, y2)),
                _pixel(max(x1, x2)),
                _pixel(max(y1, y2)),
            )
        return Clicks(
            positive=[(_pixel(x), _pixel(y)) for x, y in self.pos_points],
            negative=[(_pixel(x), _pixel(y)) for x, y in self.neg_points],
            box=box,
        )


def _pixel(value: float) -> int:
    if not math.isfinite(value):
        raise ValidationFailed(f"coordinate {value!r} is not a finite number")
    return math.floor(value)


class InteractorAnswer(BaseModel):
    """``mask``: rows of 0/1 over the whole image; ``points``: the largest outline, ``[x, y]``."""

    mask: list[list[int]]
    points: list[list[int]]


def interactor_answer(region: npt.NDArray[np.bool_]) -> InteractorAnswer:
    """The answer for the class's ``(H, W)`` bool region: the mask and its largest outline.

    ``points`` is empty when the region is; CVAT then draws nothing.
    """
    contours, _ = cv2.findContours(
        region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    points: list[list[int]] = []
    if contours:
        largest = max(contours, key=cv2.contourArea)
        points = [[int(x), int(y)] for x, y in largest.reshape(-1, 2)]
    return InteractorAnswer(mask=region.astype(np.uint8).tolist(), points=points)
