"""Training-free refinement of one class of a mask from clicks and a box (OpenCV GrabCut).

An annotator who disagrees with a draft clicks: a *positive* click on pixels that
belong to the class, a *negative* click on pixels that do not, optionally a box
around the object. :func:`refine_class` answers the whole mask with that one class
redrawn; the other classes keep their pixels except where the class takes them.

The fallback method (``grabcut``) lets only an *edit zone* change: a disk around
each click (and the inside of the box, if any). In the zone the base mask is the
probable label (class = probable foreground, the rest probable background) and the
click disks are certain, and GrabCut's colour models and graph cut decide; outside
it the base mask stays as it was. Clicks therefore act locally, as annotators
expect, and a draft that is right elsewhere is never redrawn by a colour model
that cannot tell two classes of the same intensity apart. A request is stateless:
it carries every click of the interaction, and the result depends only on the base
mask and those clicks (Label Studio and CVAT send every click again each time).

Everything here is numpy and OpenCV; the records of refinements live in
``prelabel.refinements``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import cv2
import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from prelabel.errors import ValidationFailed

logger = logging.getLogger(__name__)

CLICK_RADIUS_PX = 5
"""Radius of the certain disk a click paints (RITM's click radius)."""

GRABCUT_ITERATIONS = 3
"""GrabCut iterations per call (colour model re-fits)."""

MAX_CUT_PIXELS = 20_000
"""GrabCut cuts at most this many pixels (about 141²); larger crops are cut at a lower
resolution (the click disks are restored at full resolution), so that a refinement of a
512² image stays under 200 ms on this 2-core machine. GrabCut's graph cut grows faster than
the pixels on textured crops: 40,000 (sessions 9-18) took 332 ms at 512² on Colin27/AAL
slices, 96,000 before that 330 ms on mni-tissue (README: all measured)."""

_MIN_ZONE_RADIUS_PX = 12
_ZONE_FRACTION = 0.08
"""The edit zone of a click is a disk of this fraction of the image's longer side
(at least ``_MIN_ZONE_RADIUS_PX``): large enough that one click at the centre of a
missed object of that size takes it in, small enough to stay local."""

Point = tuple[int, int]
"""``(x, y)`` in pixels: column, row from the top-left corner."""


class RefineMethod(StrEnum):
    """The method that answered a refinement (named in the result and in the HTTP headers)."""

    GRABCUT = "grabcut"
    MODEL = "model"
    """The project's click model: its network with guidance channels (``models.click_model``)."""


MAX_CLICKS_PER_KIND = 1000
"""At most this many positive and this many negative clicks in one refinement (every
path: ``POST …/refine``, CVAT's interactor, Label Studio's smart regions)."""


class Clicks(BaseModel):
    """The clicks and box of one refinement of one class, in pixel coordinates.

    Attributes:
        positive: ``[(x, y), ...]`` pixels that belong to the class.
        negative: ``[(x, y), ...]`` pixels that do not.
        box: ``(x1, y1, x2, y2)``, corners inclusive, around the object; the class
            is redrawn only inside it (and near the clicks).
    """

    model_config = ConfigDict(frozen=True)

    positive: list[Point] = Field(default_factory=list)
    negative: list[Point] = Field(default_factory=list)
    box: tuple[int, int, int, int] | None = None

    @property
    def count(self) -> int:
        """The number of clicks (the box is not a click)."""
        return len(self.positive) + len(self.negative)

    def check(self, height: int, width: int) -> None:
        """Refuse an empty request and coordinates outside a ``width x height`` image.

        Raises:
            ValidationFailed: no click and no box; over ``MAX_CLICKS_PER_KIND`` positive
                or negative clicks; a box with ``x2 < x1`` or ``y2 < y1``; a click or a
                box corner outside ``0..width-1, 0..height-1``.
        """
        if not self.positive and not self.negative and self.box is None:
            raise ValidationFailed(
                "no positive click, no negative click and no box: nothing to refine"
            )
        for kind, points in (("positive", self.positive), ("negative", self.negative)):
            if len(points) > MAX_CLICKS_PER_KIND:
                raise ValidationFailed(
                    f"{len(points)} {kind} clicks: at most {MAX_CLICKS_PER_KIND} in one refinement"
                )
        named = [("positive", p) for p in self.positive] + [("negative", p) for p in self.negative]
        if self.box is not None:
            x1, y1, x2, y2 = self.box
            if x2 < x1 or y2 < y1:
                raise ValidationFailed(
                    f"box {list(self.box)} must be [x1, y1, x2, y2], x1<=x2, y1<=y2"
                )
            named += [("box", (x1, y1)), ("box", (x2, y2))]
        for kind, (x, y) in named:
            if not (0 <= x < width and 0 <= y < height):
                raise ValidationFailed(
                    f"{kind} point ({x}, {y}) lies outside the {width}x{height} image "
                    f"(x in 0..{width - 1}, y in 0..{height - 1})"
                )


@dataclass(frozen=True, eq=False)
class RefinedMask:
    """The result of a refinement.

    Attributes:
        mask: ``(H, W)`` class ids, the base mask's dtype: the base with the class redrawn.
        method: The method that answered.
    """

    mask: npt.NDArray[np.integer]
    method: RefineMethod


class Refiner(Protocol):
    """A refinement method: :func:`refine_class` (GrabCut) or a trained click model."""

    def __call__(
        self,
        pixels: npt.NDArray[np.uint8],
        base: npt.NDArray[np.integer],
        class_id: int,
        clicks: Clicks,
        *,
        background: int,
    ) -> RefinedMask:
        """The whole mask with ``class_id`` redrawn from ``clicks`` (see :func:`refine_class`)."""
        ...


def refine_class(
    pixels: npt.NDArray[np.uint8],
    base: npt.NDArray[np.integer],
    class_id: int,
    clicks: Clicks,
    *,
    background: int,
    max_cut_pixels: int = MAX_CUT_PIXELS,
) -> RefinedMask:
    """Redraw one class of ``base`` from clicks and a box with GrabCut in the clicks' zone.

    Args:
        pixels: ``(H, W)`` grey or ``(H, W, 3)`` RGB uint8 image.
        base: ``(H, W)`` class ids (the draft or a correction) to start from; ignore-index
            pixels count as "not the class".
        class_id: The class to redraw; not ``background``.
        clicks: Every click of the interaction (stateless), inside the image.
        background: The schema's background class: pixels the class gives up become it.
        max_cut_pixels: GrabCut's resolution cap (see ``MAX_CUT_PIXELS``).

    Returns:
        The whole refined mask, dtype of ``base``, and the method.

    Raises:
        ValueError: ``pixels`` and ``base`` differ in size, or ``class_id`` is the background.
        ValidationFailed: no click and no box, or a click or the box outside the image.
    """
    height, width = base.shape
    if pixels.shape[:2] != base.shape:
        raise ValueError(f"image {pixels.shape[:2]} and base mask {base.shape} differ in size")
    if class_id == background:
        raise ValueError(f"class {class_id} is the background; refine a foreground class")
    clicks.check(height, width)
    fg = refined_foreground(pixels, base == class_id, clicks, max_cut_pixels)
    out = base.copy()
    out[fg] = class_id
    out[~fg & (base == class_id)] = background
    return RefinedMask(mask=out, method=RefineMethod.GRABCUT)


def refined_foreground(
    pixels: npt.NDArray[np.uint8],
    region: npt.NDArray[np.bool_],
    clicks: Clicks,
    max_cut_pixels: int = MAX_CUT_PIXELS,
) -> npt.NDArray[np.bool_]:
    """The class's pixels after the clicks: ``region`` outside the edit zone, GrabCut inside.

    Args:
        pixels: ``(H, W)`` or ``(H, W, 3)`` uint8.
        region: ``(H, W)`` bool, the class's pixels in the base mask.
        clicks: Clicks inside the image.
        max_cut_pixels: GrabCut's resolution cap.

    Returns:
        ``(H, W)`` bool.
    """
    zone = _edit_zone(region.shape, clicks)
    seeds = _seed_labels(region, clicks)
    # The margin gives GrabCut's colour models samples of what surrounds the zone.
    y0, y1, x0, x1 = _crop(zone, _zone_radius(region.shape))
    crop = seeds[y0:y1, x0:x1]
    cut = _grabcut_bounded(_bgr(pixels[y0:y1, x0:x1]), crop, max_cut_pixels)
    fg = region.copy()
    inside = zone[y0:y1, x0:x1]
    fg[y0:y1, x0:x1][inside] = cut[inside]
    fg = _drop_stray_components(fg, region, clicks)
    return fg


@dataclass(frozen=True, eq=False)
class ClickDisks:
    """The pixels the clicks make certain (see :func:`click_disks`).

    Attributes:
        positive: ``(H, W)`` bool, pixels that take the class.
        negative: ``(H, W)`` bool, pixels that do not.
    """

    positive: npt.NDArray[np.bool_]
    negative: npt.NDArray[np.bool_]

    def kept_in(self, mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
        """``mask`` (the class's pixels) with every disk's pixels taking its click's label."""
        kept: npt.NDArray[np.bool_] = (mask | self.positive) & ~self.negative
        return kept


def click_disks(shape: tuple[int, ...], clicks: Clicks, radius_px: int) -> ClickDisks:
    """The pixels within ``radius_px`` of a click, each labelled by its nearest click.

    Every refinement method keeps these: a clicked pixel always ends with its click's
    label, however close a click of the other kind lies. Where a positive and a
    negative disk overlap, each pixel goes to the nearer click, and a pixel equally
    near both is certain of neither. (Painting one kind's disks over the other's
    could overwrite a click's own pixel, and the annotator would click there again
    and again without effect.)

    Args:
        shape: ``(H, W, ...)`` of the image.
        clicks: Clicks inside the image.
        radius_px: Disk radius (Euclidean, inclusive).
    """
    height, width = shape[0], shape[1]
    certain = {True: np.zeros((height, width), bool), False: np.zeros((height, width), bool)}
    labelled = [(p, True) for p in clicks.positive] + [(p, False) for p in clicks.negative]
    for (x, y), positive in labelled:
        y0, y1 = max(0, y - radius_px), min(height, y + radius_px + 1)
        x0, x1 = max(0, x - radius_px), min(width, x + radius_px + 1)
        rows, cols = np.ogrid[y0:y1, x0:x1]
        own = np.hypot(cols - x, rows - y)
        # a click of the other kind can be nearer only if it lies within 2 radii
        nearest_other = np.full(own.shape, np.inf)
        for (ox, oy), other in labelled:
            if other != positive and max(abs(ox - x), abs(oy - y)) <= 2 * radius_px:
                nearest_other = np.minimum(nearest_other, np.hypot(cols - ox, rows - oy))
        certain[positive][y0:y1, x0:x1] |= (own <= radius_px) & (own < nearest_other)
    return ClickDisks(positive=certain[True], negative=certain[False])


def _zone_radius(shape: tuple[int, ...]) -> int:
    return max(_MIN_ZONE_RADIUS_PX, round(_ZONE_FRACTION * max(shape[0], shape[1])))


def _disk(shape: tuple[int, ...], point: Point, radius: int) -> npt.NDArray[np.bool_]:
    disk = np.zeros(shape[:2], dtype=np.uint8)
    cv2.circle(disk, point, radius, 1, thickness=-1)
    return disk.astype(bool)


def _box_inside(shape: tuple[int, ...], box: tuple[int, int, int, int]) -> npt.NDArray[np.bool_]:
    x1, y1, x2, y2 = box
    inside = np.zeros(shape[:2], dtype=bool)
    inside[y1 : y2 + 1, x1 : x2 + 1] = True
    return inside


def _edit_zone(shape: tuple[int, ...], clicks: Clicks) -> npt.NDArray[np.bool_]:
    """Where the class may change: a disk around every click and the inside of the box."""
    radius = _zone_radius(shape)
    zone = np.zeros(shape[:2], dtype=bool)
    for point in [*clicks.positive, *clicks.negative]:
        zone |= _disk(shape, point, radius)
    if clicks.box is not None:
        zone |= _box_inside(shape, clicks.box)
    return zone


def _seed_labels(region: npt.NDArray[np.bool_], clicks: Clicks) -> npt.NDArray[np.uint8]:
    """GrabCut's label map: the base as probable labels, click disks certain.

    Inside the zone the base is the probable label, except around a click that
    disagrees with it: a positive click off the class makes its disk probable
    foreground, a negative click on the class probable background (as GrabCut's
    rectangle does), so that the colour models start from what the click says and
    the certain labels around the zone.
    """
    shape, radius = region.shape, _zone_radius(region.shape)
    probable = np.where(region, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    if clicks.box is not None:
        inside = _box_inside(shape, clicks.box)
        if not region[inside].any():
            probable[inside] = cv2.GC_PR_FGD
    for x, y in clicks.positive:
        if not region[y, x]:
            probable[_disk(shape, (x, y), radius)] = cv2.GC_PR_FGD
    for x, y in clicks.negative:
        if region[y, x]:
            probable[_disk(shape, (x, y), radius)] = cv2.GC_PR_BGD
    # Around the zone the base is probable too: GrabCut fits its colour models there
    # and may move those pixels, but only the zone's result is kept.
    seeds = probable
    certain = click_disks(shape, clicks, CLICK_RADIUS_PX)
    seeds[certain.positive] = cv2.GC_FGD
    seeds[certain.negative] = cv2.GC_BGD
    return seeds


def _crop(zone: npt.NDArray[np.bool_], margin_px: int) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)``, end exclusive: the zone's bounding box plus a margin."""
    rows = np.flatnonzero(zone.any(axis=1))
    cols = np.flatnonzero(zone.any(axis=0))
    height, width = zone.shape
    return (
        max(0, int(rows[0]) - margin_px),
        min(height, int(rows[-1]) + 1 + margin_px),
        max(0, int(cols[0]) - margin_px),
        min(width, int(cols[-1]) + 1 + margin_px),
    )


def _bgr(pixels: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """GrabCut wants 3-channel 8-bit pixels; a grey pixel is B = G = R."""
    if pixels.ndim == 2:
        return np.ascontiguousarray(np.repeat(pixels[:, :, None], 3, axis=2))
    return np.ascontiguousarray(pixels[:, :, ::-1])


def _grabcut_bounded(
    bgr: npt.NDArray[np.uint8], seeds: npt.NDArray[np.uint8], max_cut_pixels: int
) -> npt.NDArray[np.bool_]:
    """GrabCut on at most ``max_cut_pixels``: a larger crop is cut at a lower resolution.

    GrabCut's time grows with the pixels it cuts; past the cap the crop is shrunk
    (area-averaged pixels, nearest seeds), cut, and the result enlarged again, with
    the certain seeds (the click disks) restored at full resolution.
    """
    height, width = seeds.shape
    if height * width <= max_cut_pixels:
        return _grabcut(bgr, seeds)
    scale = (max_cut_pixels / (height * width)) ** 0.5
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small_bgr = np.asarray(cv2.resize(bgr, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)
    small_seeds = np.asarray(
        cv2.resize(seeds, size, interpolation=cv2.INTER_NEAREST), dtype=np.uint8
    )
    small = _grabcut(small_bgr, small_seeds)
    # bilinear and halfway: a smooth border, not the small cut's staircase
    cut = cv2.resize(small.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    result: npt.NDArray[np.bool_] = cut >= 0.5
    result[seeds == cv2.GC_FGD] = True
    result[seeds == cv2.GC_BGD] = False
    return result


def _grabcut(bgr: npt.NDArray[np.uint8], seeds: npt.NDArray[np.uint8]) -> npt.NDArray[np.bool_]:
    """Foreground of GrabCut initialised with ``seeds`` (``cv2.GC_*`` labels)."""
    is_fg: npt.NDArray[np.bool_] = (seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD)
    if is_fg.all() or not is_fg.any():
        # One side has no sample: GrabCut cannot fit its two colour models, and the
        # seeds already say everything.
        return is_fg
    labels = seeds.copy()
    bgd_model = np.zeros((1, 65), dtype=np.float64)
    fgd_model = np.zeros((1, 65), dtype=np.float64)
    # With GC_INIT_WITH_MASK the rectangle is unused.
    cv2.grabCut(
        bgr, labels, (0, 0, 0, 0), bgd_model, fgd_model, GRABCUT_ITERATIONS, cv2.GC_INIT_WITH_MASK
    )
    result: npt.NDArray[np.bool_] = (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)
    return result


def _drop_stray_components(
    fg: npt.NDArray[np.bool_], region: npt.NDArray[np.bool_], clicks: Clicks
) -> npt.NDArray[np.bool_]:
    """Keep the foreground's components that hold a positive click, a base pixel or box pixels.

    GrabCut may switch on far pixels that share the object's colour; a blob no click
    asked for and the base did not have is one of those.
    """
    count, labels = cv2.connectedComponents(fg.astype(np.uint8), connectivity=8)
    if count <= 1:
        return fg
    keep = np.zeros(count, dtype=bool)
    keep[np.unique(labels[fg & region])] = True
    for x, y in clicks.positive:
        keep[labels[y, x]] = True
    if clicks.box is not None:
        keep[np.unique(labels[fg & _box_inside(fg.shape, clicks.box)])] = True
    keep[0] = False
    kept: npt.NDArray[np.bool_] = keep[labels]
    return kept
