"""CVAT mask shapes: the one conversion between an index mask and what CVAT's detectors send.

A CVAT serverless (nuclio) detector answers ``POST {"image": <base64>, "threshold": t}``
with a list of shapes. A mask shape carries
``"mask": [crop..., xtl, ytl, xbr, ybr]``: the bitmap of the class inside its bounding
box, rows ``ytl..ybr`` and columns ``xtl..xbr`` **inclusive**, flattened row by row,
followed by the box (``to_cvat_mask`` in cvat-ai/cvat ``serverless/common/openvino/shared.py``).
CVAT's server turns the crop into the run lengths of its own mask format, which is what
``cvat_sdk.masks.encode_mask`` produces for the same box, so one :class:`ClassRegion`
feeds both the nuclio handler and the cvat-sdk auto-annotation function.

Everything here is numpy and pydantic; no HTTP.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from prelabel.errors import CodecError
from prelabel.schema import LabelSchema

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5
"""The threshold of CVAT's reference handlers when a request sends none."""

_BOX_LENGTH = 4


@dataclass(frozen=True, eq=False)
class ClassRegion:
    """The pixels of one class of an index mask, cut to their bounding box.

    Attributes:
        class_id: The class (an id of the project's schema).
        box: ``(xtl, ytl, xbr, ybr)``, the tightest box around the class's pixels, in
            pixel coordinates, both corners inclusive (CVAT's convention).
        bitmap: ``(ybr - ytl + 1, xbr - xtl + 1)`` bool, True where the class is.
        confidence: Mean per-pixel confidence over the class's pixels, in [0, 1], or
            None when no confidence map was given.
    """

    class_id: int
    box: tuple[int, int, int, int]
    bitmap: npt.NDArray[np.bool_]
    confidence: float | None = None

    @property
    def exclusive_box(self) -> tuple[int, int, int, int]:
        """``(x1, y1, x2, y2)`` with exclusive ``x2, y2``: the ``bbox`` of ``encode_mask``."""
        xtl, ytl, xbr, ybr = self.box
        return xtl, ytl, xbr + 1, ybr + 1

    def full_bitmap(self, height: int, width: int) -> npt.NDArray[np.bool_]:
        """The region painted into an image of ``height x width``.

        Returns:
            ``(height, width)`` bool, True on the class's pixels.

        Raises:
            CodecError: The box does not fit the image.
        """
        xtl, ytl, xbr, ybr = self.box
        if xbr >= width or ybr >= height:
            raise CodecError(
                f"mask box ({xtl}, {ytl}, {xbr}, {ybr}) lies outside the {width}x{height} image"
            )
        full = np.zeros((height, width), dtype=np.bool_)
        full[ytl : ybr + 1, xtl : xbr + 1] = self.bitmap
        return full

    def to_nuclio_mask(self) -> list[int]:
        """The ``mask`` value of a CVAT detector shape: 0/1 crop row by row, then the box."""
        return [*self.bitmap.astype(np.uint8).ravel().tolist(), *self.box]

    @classmethod
    def from_nuclio_mask(
        cls, values: Sequence[int], class_id: int, confidence: float | None = None
    ) -> ClassRegion:
        """Parse the ``mask`` value of a CVAT detector shape.

        Any non-zero crop value counts as inside: CVAT's reference handlers send 0/255,
        prelabel sends 0/1, and CVAT's server only looks at the changes.

        Args:
            values: ``[crop..., xtl, ytl, xbr, ybr]`` as in the module docstring.
            class_id: The class the shape is labelled with.
            confidence: The shape's confidence, if any.

        Returns:
            The region.

        Raises:
            CodecError: Fewer than five values, a box with negative or inverted
                corners, or a crop whose length is not the box's area.
        """
        if len(values) <= _BOX_LENGTH:
            raise CodecError(f"a CVAT mask needs a crop and a box, got {len(values)} values")
        xtl, ytl, xbr, ybr = (int(v) for v in values[-_BOX_LENGTH:])
        if not (0 <= xtl <= xbr and 0 <= ytl <= ybr):
            raise CodecError(f"CVAT mask box ({xtl}, {ytl}, {xbr}, {ybr}) is not a box")
        height, width = ybr - ytl + 1, xbr - xtl + 1
        crop = np.asarray(values[:-_BOX_LENGTH])
        if crop.size != height * width:
            raise CodecError(
                f"CVAT mask crop has {crop.size} values, its {width}x{height} box needs "
                f"{height * width}"
            )
        return cls(class_id, (xtl, ytl, xbr, ybr), (crop != 0).reshape(height, width), confidence)


def class_regions(
    mask: npt.NDArray[np.integer],
    class_ids: Iterable[int],
    confidence: npt.NDArray[np.float32] | None = None,
) -> list[ClassRegion]:
    """One region per class of ``class_ids`` that ``mask`` contains, in the given order.

    Args:
        mask: ``(H, W)`` class ids (uint8 or uint16); other values (the ignore index,
            ids left out of ``class_ids``) produce no region.
        class_ids: The classes to cut out, e.g. the schema's ids without background.
        confidence: ``(H, W)`` float32 per-pixel confidence in [0, 1], or None.

    Returns:
        The regions of the classes present; absent classes are skipped.

    Raises:
        ValueError: ``mask`` is not 2-D, or ``confidence`` has another shape.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    if confidence is not None and confidence.shape != mask.shape:
        raise ValueError(f"confidence shape {confidence.shape} != mask shape {mask.shape}")
    regions = []
    for class_id in class_ids:
        binary = mask == class_id
        rows, cols = np.flatnonzero(binary.any(axis=1)), np.flatnonzero(binary.any(axis=0))
        if rows.size == 0:
            continue
        ytl, ybr, xtl, xbr = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
        mean = None if confidence is None else float(confidence[binary].mean())
        crop = binary[ytl : ybr + 1, xtl : xbr + 1]
        regions.append(ClassRegion(class_id, (xtl, ytl, xbr, ybr), crop, mean))
    return regions


class DetectorRequest(BaseModel):
    """The body CVAT posts to a serverless detector (and the cvat-sdk function to prelabel)."""

    model_config = ConfigDict(extra="ignore")

    image: str = Field(description="the encoded image (PNG, JPEG, ...), base64")
    threshold: Annotated[float, Field(ge=0.0, le=1.0)] = DEFAULT_THRESHOLD
    """Shapes whose confidence is below this are left out."""

    def image_bytes(self) -> bytes:
        """The decoded image bytes; raises CodecError if ``image`` is not base64."""
        try:
            return base64.b64decode(self.image, validate=True)
        except ValueError as exc:  # binascii.Error, or characters outside ASCII
            raise CodecError(f"'image' is not valid base64: {exc}") from exc


class DetectorShape(BaseModel):
    """One mask shape as CVAT's detectors return it; ``mask`` is described in the module doc."""

    confidence: float | None
    label: str
    points: list[float] = Field(default_factory=list)
    mask: list[int]
    type: Literal["mask"] = "mask"

    @classmethod
    def from_region(cls, region: ClassRegion, label: str) -> DetectorShape:
        """The shape of ``region`` labelled with the class name ``label``."""
        return cls(confidence=region.confidence, label=label, mask=region.to_nuclio_mask())

    def region(self, class_id: int) -> ClassRegion:
        """This shape's region (see :meth:`ClassRegion.from_nuclio_mask`)."""
        return ClassRegion.from_nuclio_mask(self.mask, class_id, self.confidence)


def detector_shapes(
    mask: npt.NDArray[np.integer],
    confidence: npt.NDArray[np.float32],
    schema: LabelSchema,
    *,
    threshold: float,
) -> list[DetectorShape]:
    """A draft as CVAT detector shapes: one per class present, background left out.

    Args:
        mask: ``(H, W)`` class ids of the draft.
        confidence: ``(H, W)`` float32 per-pixel confidence in [0, 1].
        schema: The project's schema; shapes are labelled with class names, and
            ``schema.background`` gets no shape (CVAT users annotate objects, not
            the rest of the image).
        threshold: Shapes whose mean confidence is below this are dropped.

    Returns:
        The shapes, in ascending class id.
    """
    foreground = [c for c in schema.class_ids if c != schema.background]
    shapes = []
    for region in class_regions(mask, foreground, confidence):
        if region.confidence is not None and region.confidence < threshold:
            logger.debug(
                "class %s left out: confidence %.3f < %.3f",
                region.class_id,
                region.confidence,
                threshold,
            )
            continue
        shapes.append(DetectorShape.from_region(region, schema.class_by_id(region.class_id).name))
    return shapes
