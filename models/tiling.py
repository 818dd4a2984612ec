"""Tiled inference for images larger than the network should see at once.

Tiles of at most ``tile_px`` overlap by at least ``overlap_px``: along each side, the
fewest tiles that allow it, each made as small as that count allows (a 2048 px side takes
three tiles of 768, not three of 1024: 1.3x the image's pixels drafted instead of 2.3x).
Each tile's softmax probabilities are blended with weights that ramp linearly across the
overlap (1 elsewhere, and at the image border), so no seam shows where tiles meet. Work
goes band by band (a row of tiles): only one band of probabilities is held,
``classes x tile_px x W`` float32, so memory grows with the image's width, never with its
area; finished rows are turned into mask and confidence at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Logits = npt.NDArray[np.float32]
RunTile = Callable[[npt.NDArray[np.uint8]], Logits]
"""Logits ``(classes, h, w)`` of one tile ``(h, w[, c])`` uint8."""


@dataclass(frozen=True)
class Span:
    """Tiles along one side of an image.

    Attributes:
        side: Every tile's length along this side.
        starts: Where each tile starts, ascending; the last ends with the image.
    """

    side: int
    starts: tuple[int, ...]


@dataclass(frozen=True)
class Tiling:
    """When and how to tile.

    Attributes:
        tile_px: Largest side of a tile; images with a side above it are tiled.
        overlap_px: Least overlap of neighbouring tiles (blended).
    """

    tile_px: int = 1024
    overlap_px: int = 128

    def __post_init__(self) -> None:
        if self.tile_px < 64 or not 0 <= self.overlap_px <= self.tile_px // 2:
            raise ValueError(
                f"tiling needs tile_px >= 64 and 0 <= overlap_px <= tile_px / 2; got "
                f"tile_px={self.tile_px}, overlap_px={self.overlap_px}"
            )

    def applies(self, height: int, width: int) -> bool:
        """Whether an image of this size is tiled."""
        return max(height, width) > self.tile_px

    def span(self, length: int, align: int = 1) -> Span:
        """How tiles cover a side of ``length``.

        Args:
            length: The image's side.
            align: Tile sides are rounded up to a multiple of this (the network's stride:
                the predictor pads to it anyway), never beyond ``tile_px``.

        Returns:
            The fewest tiles of at most ``tile_px`` overlapping by at least ``overlap_px``,
            each as short as that count allows, evenly spaced, the last flush with the end.
        """
        if length <= self.tile_px:
            return Span(length, (0,))
        count = math.ceil((length - self.overlap_px) / (self.tile_px - self.overlap_px))
        side = math.ceil((length + (count - 1) * self.overlap_px) / count)
        side = min(self.tile_px, math.ceil(side / align) * align)
        return Span(side, tuple((length - side) * i // (count - 1) for i in range(count)))


def _ramp(length: int, overlap_before: int, overlap_after: int) -> npt.NDArray[np.float32]:
    """Weights along one side of a tile: rising over the overlap with the previous tile,
    falling over the overlap with the next, 1 in between (and at image borders)."""
    weights = np.ones(length, dtype=np.float32)
    if overlap_before > 0:
        weights[:overlap_before] = (np.arange(overlap_before, dtype=np.float32) + 1) / (
            overlap_before + 1
        )
    if overlap_after > 0:
        weights[length - overlap_after :] = np.minimum(
            weights[length - overlap_after :],
            (np.arange(overlap_after, 0, -1, dtype=np.float32)) / (overlap_after + 1),
        )
    return weights


def _overlaps(starts: tuple[int, ...], index: int, tile: int) -> tuple[int, int]:
    before = starts[index - 1] + tile - starts[index] if index > 0 else 0
    after = starts[index] + tile - starts[index + 1] if index + 1 < len(starts) else 0
    return max(before, 0), max(after, 0)


def _softmax(logits: Logits) -> Logits:
    shifted = logits - logits.max(axis=0, keepdims=True)
    exp = np.exp(shifted)
    probs: Logits = exp / exp.sum(axis=0, keepdims=True)
    return probs


def predict_tiled(
    image: npt.NDArray[np.uint8], run_tile: RunTile, tiling: Tiling, align: int = 1
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float32]]:
    """Class ids and confidence of a large image, tile by tile.

    Args:
        image: (H, W) or (H, W, C) uint8.
        run_tile: The network on one tile: logits ``(classes, h, w)``.
        tiling: Tile size and overlap.
        align: Tile sides are multiples of this where they can be (``Tiling.span``).

    Returns:
        ``(mask, confidence)``: (H, W) argmax class ids and (H, W) float32 blended
        probability of that class.
    """
    height, width = image.shape[:2]
    vertical, horizontal = tiling.span(height, align), tiling.span(width, align)
    rows, cols = vertical.starts, horizontal.starts
    mask = np.empty((height, width), dtype=np.intp)
    confidence = np.empty((height, width), dtype=np.float32)
    band_h, tile_w = vertical.side, horizontal.side
    acc: Logits | None = None
    weight_sum = np.zeros((band_h, width), dtype=np.float32)
    for r, y0 in enumerate(rows):
        before_y, after_y = _overlaps(rows, r, band_h)
        wy = _ramp(band_h, before_y, after_y)
        for c, x0 in enumerate(cols):
            before_x, after_x = _overlaps(cols, c, tile_w)
            weights = wy[:, None] * _ramp(tile_w, before_x, after_x)[None, :]
            probs = _softmax(run_tile(image[y0 : y0 + band_h, x0 : x0 + tile_w]))
            if acc is None:
                acc = np.zeros((probs.shape[0], band_h, width), dtype=np.float32)
            acc[:, :, x0 : x0 + tile_w] += probs * weights
            weight_sum[:, x0 : x0 + tile_w] += weights
        if acc is None:
            raise ValueError("an image without pixels")
        # Rows before the next band's start are final: write them, carry the overlap.
        done = rows[r + 1] - y0 if r + 1 < len(rows) else band_h
        blended = acc[:, :done] / weight_sum[None, :done]
        mask[y0 : y0 + done] = blended.argmax(axis=0)
        confidence[y0 : y0 + done] = blended.max(axis=0)
        carry = band_h - done
        acc[:, :carry] = acc[:, done:]
        acc[:, carry:] = 0.0
        weight_sum[:carry] = weight_sum[done:]
        weight_sum[carry:] = 0.0
    return mask, confidence
