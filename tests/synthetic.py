"""Synthetic labelled images for tests: small, deterministic, learnable."""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt
from PIL import Image

SHAPES_CLASSES = [
    {"id": 0, "name": "background", "color": "#000000"},
    {"id": 1, "name": "disk", "color": "#ff0000", "translations": {"de": "Scheibe"}},
    {"id": 2, "name": "square", "color": "#00ff00", "translations": {"de": "Quadrat"}},
]


def shapes_sample(seed: int, size: int = 64) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """A grayscale image with a bright disk (class 1) and a mid-grey square (class 2).

    Returns ``(image, mask)``: (size, size) uint8 each; the task is learnable from
    intensity and shape, so a tiny network improves visibly within a few steps.
    """
    rng = np.random.default_rng(seed)
    image = rng.normal(30, 8, (size, size)).clip(0, 255)
    mask = np.zeros((size, size), dtype=np.uint8)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.integers(size // 4, 3 * size // 4, 2).tolist()
    r = int(rng.integers(6, 12))
    disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    sy, sx = rng.integers(0, size - 16, 2)
    side = int(rng.integers(8, 16))
    square = np.zeros_like(disk)
    square[sy : sy + side, sx : sx + side] = True
    square &= ~disk
    image[disk], mask[disk] = rng.normal(220, 10, int(disk.sum())).clip(0, 255), 1
    image[square], mask[square] = rng.normal(120, 10, int(square.sum())).clip(0, 255), 2
    return image.astype(np.uint8), mask


def png_bytes(array: npt.NDArray[np.integer]) -> bytes:
    """Encode a (H, W) or (H, W, 3) uint8 array as PNG (mode L or RGB)."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def twin_disks_sample(
    seed: int, size: int = 64
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """Two identical bright disks; only one of them, drawn at random, is class 1.

    The image cannot tell which: a network without guidance learns neither (or both),
    and only a click says which one the annotator means. The test of click models.
    """
    rng = np.random.default_rng(seed)
    image = rng.normal(30, 8, (size, size))
    mask = np.zeros((size, size), dtype=np.uint8)
    yy, xx = np.mgrid[:size, :size]
    margin, radius = size // 5, size // 7
    while True:
        y1, x1, y2, x2 = rng.integers(margin, size - margin, 4).tolist()
        if (y1 - y2) ** 2 + (x1 - x2) ** 2 > (3 * radius) ** 2:
            break
    first = (yy - y1) ** 2 + (xx - x1) ** 2 <= radius**2
    second = (yy - y2) ** 2 + (xx - x2) ** 2 <= radius**2
    image[first | second] = rng.normal(200, 10, int((first | second).sum()))
    mask[first if rng.random() < 0.5 else second] = 1
    return image.clip(0, 255).astype(np.uint8), mask
