"""photo-objects: small objects of ten kinds on natural photos, 128x128 RGB, generated offline.

Backgrounds are random crops (rescaled, flipped) of the photographs that
scikit-image ships inside its wheel (``skimage.data``: astronaut, cat, coffee,
rocket, motorcycle, retina, microscopy, textures...). On each, one to four
small objects (10-30 px) are drawn, each of one of ten shape kinds, randomly
rotated and scaled, and filled with a random colour with noise or with a texture
cut from another photo, so that the kind is told by shape rather than colour.
Later objects occlude earlier ones; the mask holds the kind's class id (0 is
background). Deterministic for a seed.

This is a development stand-in for RGB photo data (segmentation in general,
not brain slices): a network must separate objects from clutter and tell
shapes apart with little data.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt

from prelabel.datasets.folder import write_dataset
from prelabel.schema import LabelClass, LabelSchema

logger = logging.getLogger(__name__)

SIZE_PX = 128
DEFAULT_IMAGES = 400
OBJECT_PX = (10, 30)
OBJECTS_PER_IMAGE = (1, 4)

KINDS: tuple[tuple[str, str], ...] = (
    ("disk", "#e6194b"),
    ("square", "#3cb44b"),
    ("triangle", "#ffe119"),
    ("star", "#4363d8"),
    ("cross", "#f58231"),
    ("ring", "#911eb4"),
    ("bar", "#46f0f0"),
    ("hexagon", "#f032e6"),
    ("crescent", "#bcf60c"),
    ("arrow", "#fabebe"),
)

PHOTO_OBJECTS_SCHEMA = LabelSchema(
    classes=[
        LabelClass(id=0, name="background", color="#000000"),
        *(LabelClass(id=i, name=name, color=color) for i, (name, color) in enumerate(KINDS, 1)),
    ],
    ignore_index=255,
)

Shape = npt.NDArray[np.bool_]
Rng = np.random.Generator


def _polygon(points: list[tuple[float, float]], size: int, angle: float) -> Shape:
    """Rasterise a polygon given in unit coordinates (-1..1), rotated, into a size x size mask."""
    from skimage.draw import polygon

    cos, sin = math.cos(angle), math.sin(angle)
    half = (size - 1) / 2
    rows = [half + half * (x * sin + y * cos) for x, y in points]
    cols = [half + half * (x * cos - y * sin) for x, y in points]
    mask = np.zeros((size, size), dtype=bool)
    rr, cc = polygon(rows, cols, shape=mask.shape)  # type: ignore[no-untyped-call]
    mask[rr, cc] = True
    return mask


def _regular(corners: int, inner: float | None = None) -> list[tuple[float, float]]:
    """A regular polygon (``inner`` None) or a star with ``inner`` radius at alternate points."""
    count = corners * (2 if inner is not None else 1)
    points = []
    for i in range(count):
        radius = inner if inner is not None and i % 2 else 1.0
        theta = 2 * math.pi * i / count - math.pi / 2
        points.append((radius * math.cos(theta), radius * math.sin(theta)))
    return points


def _grid(size: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    half = (size - 1) / 2
    yy, xx = np.mgrid[:size, :size]
    return (yy - half) / half, (xx - half) / half


def _disk(size: int, angle: float) -> Shape:
    yy, xx = _grid(size)
    return yy**2 + xx**2 <= 1.0


def _ring(size: int, angle: float) -> Shape:
    yy, xx = _grid(size)
    r2 = yy**2 + xx**2
    return (r2 <= 1.0) & (r2 >= 0.45**2)


def _crescent(size: int, angle: float) -> Shape:
    yy, xx = _grid(size)
    dy, dx = 0.45 * math.sin(angle), 0.45 * math.cos(angle)
    return (yy**2 + xx**2 <= 1.0) & ((yy - dy) ** 2 + (xx - dx) ** 2 > 0.75**2)


_CROSS = [
    *((-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3)),
    *((0.3, 1), (-0.3, 1), (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)),
]

SHAPES: dict[str, Callable[[int, float], Shape]] = {
    "disk": _disk,
    "square": lambda s, a: _polygon([(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)], s, a),
    "triangle": lambda s, a: _polygon(_regular(3), s, a),
    "star": lambda s, a: _polygon(_regular(5, inner=0.42), s, a),
    "cross": lambda s, a: _polygon(_CROSS, s, a),
    "ring": _ring,
    "bar": lambda s, a: _polygon([(-1, -0.25), (1, -0.25), (1, 0.25), (-1, 0.25)], s, a),
    "hexagon": lambda s, a: _polygon(_regular(6), s, a),
    "crescent": _crescent,
    "arrow": lambda s, a: _polygon(
        [(-1, -0.2), (0.2, -0.2), (0.2, -0.6), (1, 0), (0.2, 0.6), (0.2, 0.2), (-1, 0.2)], s, a
    ),
}


def shipped_photos() -> list[npt.NDArray[np.uint8]]:
    """The photographs inside scikit-image's wheel, as (H, W, 3) uint8 (none downloaded)."""
    from skimage import data

    loaders: tuple[Callable[[], object], ...] = (
        data.astronaut,
        data.chelsea,
        data.coffee,
        data.rocket,
        data.hubble_deep_field,
        data.immunohistochemistry,
        data.retina,
        data.brick,
        data.grass,
        data.gravel,
        data.camera,
        data.moon,
        data.coins,
        data.cell,
        data.horse,
        data.page,
        lambda: data.stereo_motorcycle()[0],  # type: ignore[no-untyped-call]
    )
    photos = []
    for load in loaders:
        pixels = np.asarray(load())
        if pixels.dtype == bool:
            pixels = pixels.astype(np.uint8) * 255
        if pixels.ndim == 2:
            pixels = np.repeat(pixels[..., None], 3, axis=2)
        photos.append(np.ascontiguousarray(pixels[..., :3]).astype(np.uint8))
    return photos


def _crop(photo: npt.NDArray[np.uint8], size: int, rng: Rng) -> npt.NDArray[np.uint8]:
    """A random square crop (side 1-4x ``size``) resized to ``size``, maybe mirrored."""
    from PIL import Image

    height, width = photo.shape[:2]
    side = int(rng.integers(size, max(size + 1, min(height, width, 4 * size))))
    top = int(rng.integers(0, height - side + 1))
    left = int(rng.integers(0, width - side + 1))
    patch = Image.fromarray(photo[top : top + side, left : left + side])
    crop = np.asarray(patch.resize((size, size), Image.Resampling.BILINEAR))
    return crop[:, ::-1] if rng.random() < 0.5 else crop


def _fill(photos: list[npt.NDArray[np.uint8]], size: int, rng: Rng) -> npt.NDArray[np.float64]:
    """An object's pixels: a noisy random colour, or a texture cut from a photo."""
    if rng.random() < 0.5:
        colour = rng.integers(0, 256, size=3).astype(np.float64)
        noise = rng.normal(0, 12, size=(size, size, 3))
        return np.clip(colour + noise, 0, 255)
    return _crop(photos[int(rng.integers(len(photos)))], size, rng).astype(np.float64)


def make_image(
    photos: list[npt.NDArray[np.uint8]], rng: Rng, size: int = SIZE_PX
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """One (H, W, 3) image and its (H, W) mask of object kinds."""
    image = _crop(photos[int(rng.integers(len(photos)))], size, rng).astype(np.float64)
    mask = np.zeros((size, size), dtype=np.uint8)
    for _ in range(int(rng.integers(OBJECTS_PER_IMAGE[0], OBJECTS_PER_IMAGE[1] + 1))):
        kind = int(rng.integers(len(KINDS)))
        side = int(rng.integers(OBJECT_PX[0], OBJECT_PX[1] + 1))
        shape = SHAPES[KINDS[kind][0]](side, float(rng.uniform(0, 2 * math.pi)))
        top, left = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        window = (slice(top, top + side), slice(left, left + side))
        pixels = _fill(photos, side, rng)
        image[window][shape] = pixels[shape]
        mask[window][shape] = kind + 1
    return np.clip(image, 0, 255).astype(np.uint8), mask


def _samples(
    count: int, seed: int
) -> Iterator[tuple[str, npt.NDArray[np.uint8], npt.NDArray[np.uint8]]]:
    photos = shipped_photos()
    rng = np.random.default_rng(seed)
    for index in range(count):
        image, mask = make_image(photos, rng)
        yield f"obj{index:04d}", image, mask


def build_photo_objects(out_dir: Path, *, count: int = DEFAULT_IMAGES, seed: int = 0) -> Path:
    """Write the photo-objects dataset folder (``count`` images) and return it."""
    written = write_dataset(out_dir, PHOTO_OBJECTS_SCHEMA, _samples(count, seed))
    logger.info("photo-objects: %d images of %dx%d in %s", written, SIZE_PX, SIZE_PX, out_dir)
    return out_dir
