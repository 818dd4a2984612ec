"""Image and mask codecs: image bytes, index PNGs, confidence PNGs and COCO RLE.

Everything that turns untrusted bytes into arrays lives here, so every decoder
checks the pixel count from the header before it decodes pixels, and raises
:class:`~prelabel.errors.CodecError` (or :class:`~prelabel.errors.ImageTooLarge`)
instead of whatever the underlying library throws.

Arrays are row-major ``(H, W)`` or ``(H, W, 3)``. COCO RLE counts run down the
columns (Fortran order), as ``pycocotools`` defines them.
"""

from __future__ import annotations

import io
import logging
import struct
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, TypeGuard, TypeVar

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image
from pycocotools import mask as coco_mask
from pydantic import BaseModel, ConfigDict, Field

from prelabel.errors import CodecError, ImageTooLarge, SchemaError
from prelabel.schema import LabelSchema, class_id_in_key

logger = logging.getLogger(__name__)

IMAGE_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "TIFF", "BMP", "WEBP", "GIF")
"""Formats :func:`decode_image` accepts (PIL format names; JPEG includes MPO).

Limiting PIL to these keeps plugins such as EPS (which runs Ghostscript) away
from uploaded bytes.
"""

_PNG = ("PNG",)
_PIL_PARSE_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    SyntaxError,
    TypeError,
    KeyError,
    IndexError,
    EOFError,
    struct.error,
    ZeroDivisionError,
)
"""What Pillow lets through, besides OSError, on bytes it cannot read: its plugins' parse
errors (a TIFF page without a size, a cut GIF frame or APNG control chunk) and ValueError
for metadata bombs (PNG text chunks inflating past ``MAX_TEXT_CHUNK``)."""
_PIL_FAILURES: tuple[type[Exception], ...] = (OSError, *_PIL_PARSE_ERRORS)
_PALETTE_LENGTH = 768
_RLE_CHAR_OFFSET = 48
_RLE_MAX_CHUNKS = 7
"""Seven 5-bit chunks hold any run below 2**32, the limit of pycocotools' uint counts."""
PNG_COMPRESS_LEVEL = 1
"""zlib level of every PNG written here. Masks and confidence maps are encoded while a
person waits (drafts, corrections, refinements): on a 512² draft, level 1 takes 14 ms for
the confidence map and 3 ms for the mask against 68 ms and 4 ms at Pillow's default 6, for
16% and 57% more bytes (README, "Draft benchmark")."""
PNG_COMPRESS_STRATEGY = zlib.Z_RLE
"""zlib strategy of every PNG written here: after PNG's row filters, masks and confidence
maps are mostly runs, which run-length matching finds at a fraction of the cost of the
default string matching. On the benchmark's 512² draft the confidence map takes 11 ms
instead of 20 ms and 8% fewer bytes; masks, confidence maps and photographs all came out
smaller, none slower by more than 0.3 ms (README, "Draft benchmark")."""

GREY_PNG_FLAGS: tuple[int, ...] = (
    cv2.IMWRITE_PNG_COMPRESSION,
    PNG_COMPRESS_LEVEL,
    cv2.IMWRITE_PNG_STRATEGY,
    cv2.IMWRITE_PNG_STRATEGY_RLE,
    cv2.IMWRITE_PNG_FILTER,
    cv2.IMWRITE_PNG_FAST_FILTERS,
)
"""OpenCV's PNG writer settings for 8-bit greyscale maps (confidence): the same zlib
level and strategy as every PNG here, and libpng choosing per row among its cheap
filters (none, sub, up) where Pillow tries all five: 1.6-2.1x faster for 1-5% more
bytes (the benchmark model's 512² confidence map: 3.7 against 7.9 ms, 177 against
174 kB; a smooth map: 2.5 against 3.9 ms, 36 kB either way; README, "Draft benchmark")."""

_IntT = TypeVar("_IntT", bound=np.integer[Any])


class CocoRle(BaseModel):
    """A binary mask as compressed COCO RLE, the form that travels in JSON.

    ``size`` is ``[H, W]``; ``counts`` is the compressed string of
    ``pycocotools.mask.encode`` (column-major run lengths, first run of zeros).
    """

    model_config = ConfigDict(frozen=True)

    size: Annotated[
        list[Annotated[int, Field(strict=True, gt=0)]], Field(min_length=2, max_length=2)
    ]
    counts: str


# --- images ---------------------------------------------------------------


def decode_image(data: bytes, *, max_pixels: int) -> npt.NDArray[np.uint8]:
    """Decode image bytes into a uint8 array.

    Modes are normalised: ``L`` stays ``(H, W)``; ``1``, ``LA`` become ``L``;
    ``P``, ``PA``, ``RGBA``, ``CMYK`` and other colour modes become ``RGB`` (alpha
    dropped). 16- and 32-bit greyscale (``I;16``, ``I``, ``F``) become ``L``:
    negative values clip to 0, and when the brightest pixel exceeds 255 the image
    is scaled linearly so that it maps to 255 (data at most 255 is kept as is).
    Refused, because the pixels to label would be ambiguous: an EXIF orientation
    other than upright (viewers that apply it would show the image turned against
    its masks; store the pixels upright instead), and multi-frame files (animated
    GIF/WebP, TIFF stacks: upload one image per frame). A camera's MPO JPEG yields
    its main image.

    Args:
        data: The encoded image, one of :data:`IMAGE_FORMATS`.
        max_pixels: Largest accepted ``H * W``, checked from the header before
            any pixel is decoded.

    Returns:
        ``(H, W)`` greyscale or ``(H, W, 3)`` RGB, dtype uint8, values 0..255.

    Raises:
        ImageTooLarge: The image has more than ``max_pixels`` pixels.
        CodecError: The bytes are not an image of a supported format, or are
            truncated or corrupt.
        ValueError: ``max_pixels`` is not positive.
    """
    with _open(
        data, max_pixels=max_pixels, formats=IMAGE_FORMATS, what="image", single_upright=True
    ) as image:
        mode = image.mode
        if mode in ("L", "RGB"):
            return np.array(image, dtype=np.uint8)
        if mode in ("1", "LA", "La"):
            return np.array(image.convert("L"), dtype=np.uint8)
        if mode.startswith("I") or mode == "F":
            return _scale_to_uint8(np.asarray(image))
        try:
            # Through RGBA: converting a palette image with a transparency table
            # straight to RGB makes PIL warn.
            rgba = image.convert("RGBA") if mode in ("P", "PA") else image
            return np.array(rgba.convert("RGB"), dtype=np.uint8)
        except ValueError as exc:
            raise CodecError(f"cannot convert an image of mode {mode!r} to RGB") from exc


def encode_image_png(image: npt.NDArray[np.uint8]) -> bytes:
    """Encode an image as PNG.

    Args:
        image: ``(H, W)`` greyscale or ``(H, W, 3)`` RGB, dtype uint8.

    Returns:
        The PNG bytes (mode ``L`` or ``RGB``).

    Raises:
        ValueError: The array has another shape or dtype.
    """
    if image.dtype != np.uint8 or not (
        image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)
    ):
        raise ValueError(
            f"image must be (H, W) or (H, W, 3) uint8, got shape {image.shape} {image.dtype}"
        )
    _check_not_empty(image.shape)
    return _save_png(Image.fromarray(np.ascontiguousarray(image)))


# --- index masks ----------------------------------------------------------


def encode_index_png(
    mask: npt.NDArray[np.uint8] | npt.NDArray[np.uint16],
    palette: Sequence[int] | None = None,
) -> bytes:
    """Encode an index mask (one class id per pixel) as a lossless PNG.

    Args:
        mask: ``(H, W)`` class ids, dtype uint8 or uint16 (ignore index included).
        palette: 768 ints (``r, g, b`` for indices 0..255, each 0..255), e.g.
            ``LabelSchema.palette()``. A uint8 mask with a palette is written as a
            palette PNG (mode ``P``, viewable in colour), without as 8-bit
            greyscale. Ignored for uint16 masks, since a PNG palette holds at most
            256 colours; those are written as 16-bit greyscale.

    Returns:
        The PNG bytes; :func:`decode_index_png` reads back the same ids.

    Raises:
        ValueError: The mask is not 2-D uint8/uint16, or the palette is not 768
            ints in 0..255.
    """
    if mask.ndim != 2 or mask.dtype not in (np.uint8, np.uint16):
        raise ValueError(
            f"mask must be (H, W) uint8 or uint16, got shape {mask.shape} {mask.dtype}"
        )
    _check_not_empty(mask.shape)
    image = Image.fromarray(np.ascontiguousarray(mask))
    if palette is not None and mask.dtype == np.uint8:
        image.putpalette(_check_palette(palette))
    return _save_png(image)


def decode_index_png(
    data: bytes, *, max_pixels: int
) -> npt.NDArray[np.uint8] | npt.NDArray[np.uint16]:
    """Decode an index-mask PNG into class ids.

    A palette PNG yields its raw indices (not the palette colours). 8-bit
    greyscale and palette PNGs (and 1-bit greyscale, as 0/1) give uint8; 16-bit
    greyscale gives uint16.

    Args:
        data: PNG bytes.
        max_pixels: Largest accepted ``H * W``, checked before decoding pixels.

    Returns:
        ``(H, W)`` class ids, dtype uint8 or uint16.

    Raises:
        ImageTooLarge: The mask has more than ``max_pixels`` pixels.
        CodecError: The bytes are not a PNG, are truncated, or hold colour
            (RGB/RGBA/grey+alpha) instead of one index per pixel.
        ValueError: ``max_pixels`` is not positive.
    """
    with _open(data, max_pixels=max_pixels, formats=_PNG, what="mask PNG") as image:
        mode = image.mode
        if mode in ("P", "L", "1"):
            return np.array(image, dtype=np.uint8)
        if mode.startswith("I;16"):
            return np.array(image).astype(np.uint16)
        if mode == "I":
            values = np.asarray(image)
            if values.min() < 0 or values.max() > np.iinfo(np.uint16).max:
                raise CodecError(
                    f"mask values {values.min()}..{values.max()} do not fit uint16 (0..65535)"
                )
            return values.astype(np.uint16)
    raise CodecError(
        f"a mask must be a single-channel index PNG (palette, 8- or 16-bit greyscale), "
        f"got mode {mode!r}"
    )


# --- confidence maps ------------------------------------------------------


def encode_confidence_png(confidence: npt.NDArray[np.floating[Any]]) -> bytes:
    """Encode a per-pixel confidence map as an 8-bit greyscale PNG.

    Each value becomes ``round(c * 255)`` after clipping to [0, 1], so a round
    trip is exact to within 1/510.

    Args:
        confidence: ``(H, W)`` float (float32 expected), values in [0, 1].

    Returns:
        The PNG bytes (mode ``L``).

    Raises:
        ValueError: Not a 2-D float array, or it holds NaN.
    """
    if confidence.ndim != 2 or not np.issubdtype(confidence.dtype, np.floating):
        raise ValueError(
            f"confidence must be (H, W) float, got shape {confidence.shape} {confidence.dtype}"
        )
    _check_not_empty(confidence.shape)
    if np.isnan(confidence).any():
        raise ValueError("confidence holds NaN; expected values in [0, 1]")
    levels = np.rint(np.clip(confidence, 0.0, 1.0) * 255.0).astype(np.uint8)
    return _save_grey_png(levels)


def decode_confidence_png(data: bytes, *, max_pixels: int | None = None) -> npt.NDArray[np.float32]:
    """Decode a PNG written by :func:`encode_confidence_png`.

    Args:
        data: PNG bytes, 8-bit greyscale.
        max_pixels: Largest accepted ``H * W``; None trusts the size (the
            service reads back only maps it wrote itself).

    Returns:
        ``(H, W)`` float32 confidence, values in [0, 1] in steps of 1/255.

    Raises:
        ImageTooLarge: The map has more than ``max_pixels`` pixels.
        CodecError: The bytes are not an 8-bit greyscale PNG, or are truncated.
        ValueError: ``max_pixels`` is given and not positive.
    """
    with _open(data, max_pixels=max_pixels, formats=_PNG, what="confidence PNG") as image:
        if image.mode != "L":
            raise CodecError(f"a confidence map must be an 8-bit greyscale PNG, got {image.mode!r}")
        levels = np.asarray(image)
    return levels.astype(np.float32) / np.float32(255.0)


# --- COCO RLE -------------------------------------------------------------


def encode_rle(binary: npt.NDArray[np.bool_]) -> CocoRle:
    """Encode a binary mask as compressed COCO RLE.

    Args:
        binary: ``(H, W)`` bool mask, H and W at least 1.

    Returns:
        The RLE; ``counts`` is the string ``pycocotools.mask.encode`` produces.

    Raises:
        ValueError: Not a 2-D bool array, or empty.
    """
    if binary.ndim != 2 or binary.dtype != np.bool_:
        raise ValueError(f"binary must be (H, W) bool, got shape {binary.shape} {binary.dtype}")
    _check_not_empty(binary.shape)
    encoded = coco_mask.encode(np.asfortranarray(binary.astype(np.uint8)))
    height, width = (int(n) for n in encoded["size"])
    return CocoRle(size=[height, width], counts=bytes(encoded["counts"]).decode("ascii"))


def decode_rle(
    rle: CocoRle | Mapping[str, object], *, size: tuple[int, int] | None = None
) -> npt.NDArray[np.bool_]:
    """Decode a COCO RLE after validating it strictly.

    Accepts compressed RLE (``counts`` a string) and uncompressed RLE (``counts``
    a list of run lengths). The run lengths must be non-negative and sum to
    exactly ``H * W``; pycocotools' own decoder does not check this and turns a
    malformed string into a wrong mask, so the string is parsed here.

    Args:
        rle: A :class:`CocoRle` or a mapping with ``size`` ([H, W]) and ``counts``.
        size: The expected ``(H, W)``. Pass it for untrusted input: without it
            the RLE's own size is believed, and decoding allocates ``H * W`` bytes.

    Returns:
        ``(H, W)`` bool mask, C-contiguous.

    Raises:
        CodecError: Missing or ill-typed keys, a size that is not two positive
            ints or differs from ``size``, or counts that are malformed or do not
            cover ``H * W`` pixels exactly.
        ValueError: ``size`` is not two positive ints.
    """
    height, width = _rle_size_and_check(rle, size)
    counts = rle.counts if isinstance(rle, CocoRle) else rle["counts"]
    total = height * width
    if isinstance(counts, str):
        runs = _parse_compressed_counts(counts, total)
    elif isinstance(counts, list):
        runs = _check_uncompressed_counts(counts)
    else:
        raise CodecError(
            f"RLE counts must be a string or a list of ints, got {type(counts).__name__}"
        )
    if sum(runs) != total:
        raise CodecError(f"RLE runs cover {sum(runs)} pixels, expected {height}x{width} = {total}")
    values = np.zeros(len(runs), dtype=np.bool_)
    values[1::2] = True
    flat = np.repeat(values, np.asarray(runs, dtype=np.int64))
    return np.ascontiguousarray(flat.reshape((height, width), order="F"))


def mask_to_rles(
    mask: npt.NDArray[np.integer[Any]], class_ids: Iterable[int]
) -> dict[int, CocoRle]:
    """Split an index mask into one RLE per class.

    Args:
        mask: ``(H, W)`` integer class ids (any pixel value not in ``class_ids``,
            such as the ignore index, is left out).
        class_ids: The classes to encode.

    Returns:
        ``{class_id: rle}`` for each class id present in the mask, in the order
        of ``class_ids``; absent classes are omitted.

    Raises:
        ValueError: ``mask`` is not a 2-D integer array, or a class id is not an int.
    """
    if mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"mask must be (H, W) integer, got shape {mask.shape} {mask.dtype}")
    present = set(np.unique(mask).tolist())
    rles: dict[int, CocoRle] = {}
    for class_id in class_ids:
        if not _is_int(class_id):
            raise ValueError(f"class ids must be ints, got {class_id!r}")
        if class_id in present and class_id not in rles:
            rles[class_id] = encode_rle(mask == class_id)
    return rles


def rles_to_mask(
    rles: Mapping[int, CocoRle | Mapping[str, object]],
    *,
    size: tuple[int, int],
    fill: int,
    dtype: type[_IntT],
) -> npt.NDArray[_IntT]:
    """Paint per-class RLEs into one index mask.

    Args:
        rles: ``{class_id: rle}``; every RLE must have size ``size``.
        size: ``(H, W)`` of the mask.
        fill: The value of pixels no RLE covers (background or ignore index).
        dtype: Integer dtype of the result, e.g. ``LabelSchema.mask_dtype``.

    Returns:
        ``(H, W)`` array of ``dtype`` holding class ids and ``fill``.

    Raises:
        CodecError: An RLE is malformed or has another size, or two classes claim
            the same pixels (the message names both ids and the overlap).
        ValueError: ``size`` is not two positive ints, or ``fill`` or a class id
            is not an int that fits ``dtype``.
    """
    height, width = _check_size_argument(size)
    _check_fits(fill, dtype, "fill")
    mask = np.full((height, width), fill, dtype=dtype)
    owner = np.full((height, width), -1, dtype=np.int64)
    for class_id, rle in rles.items():
        _check_fits(class_id, dtype, "class id")
        binary = decode_rle(rle, size=(height, width))
        claimed = owner[binary]
        if (claimed >= 0).any():
            other = int(claimed[claimed >= 0][0])
            overlap = int(np.count_nonzero(claimed == other))
            raise CodecError(f"RLEs of classes {other} and {class_id} overlap on {overlap} pixels")
        owner[binary] = class_id
        mask[binary] = class_id
    return mask


def rles_to_schema_mask(
    classes: Mapping[str, CocoRle | Mapping[str, object]],
    schema: LabelSchema,
    *,
    size: tuple[int, int],
) -> npt.NDArray[np.integer[Any]]:
    """Paint per-class RLEs keyed as JSON sends them (``{"1": rle}``) into an index mask.

    Args:
        classes: ``{class id as decimal digits: rle}``; a key may name a class of
            ``schema`` or its ignore index.
        schema: The project's schema: the ids allowed, the background that fills the
            pixels no RLE covers, the mask's dtype.
        size: ``(H, W)`` of the mask; every RLE must have this size.

    Returns:
        ``(H, W)`` array of ``schema.mask_dtype``.

    Raises:
        CodecError: A key that is not ASCII decimal digits (``class_id_in_key``), two
            keys naming one class (``"1"`` and ``"01"``), an RLE that is malformed or of
            another size, or two classes claiming the same pixels.
        SchemaError: A key naming neither a class of the schema nor its ignore index.
    """
    allowed = {*schema.class_ids, schema.ignore_index}
    rles: dict[int, CocoRle | Mapping[str, object]] = {}
    keys: dict[int, str] = {}
    for key, rle in classes.items():
        class_id = class_id_in_key(key)
        if class_id is None:
            raise CodecError(f"class key {key[:20]!r} is not a class id (decimal digits)")
        if class_id not in allowed:
            raise SchemaError(
                f"class id {class_id} is not in the schema {schema.class_ids} "
                f"(ignore index {schema.ignore_index})"
            )
        if class_id in keys:
            raise CodecError(
                f"class {class_id} is given twice (keys {keys[class_id]!r} and {key[:20]!r})"
            )
        rles[class_id], keys[class_id] = rle, key[:20]
    return rles_to_mask(rles, size=size, fill=schema.background, dtype=schema.mask_dtype)


# --- private helpers ------------------------------------------------------


def _open(
    data: bytes,
    *,
    max_pixels: int | None,
    formats: tuple[str, ...],
    what: str,
    single_upright: bool = False,
) -> Image.Image:
    """Open ``data`` with PIL, check its pixel count (and with ``single_upright``, that it
    is one upright frame: ``_check_single_upright``), then load the pixels.

    The orientation is read before loading: loading a TIFF turns its pixels upright and
    drops the tag, so a check after it would let TIFFs through that JPEGs cannot pass.
    """
    if max_pixels is not None and (not _is_int(max_pixels) or max_pixels < 1):
        raise ValueError(f"max_pixels must be a positive int, got {max_pixels!r}")
    try:
        image = Image.open(io.BytesIO(data), formats=formats)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # The header claims more pixels than PIL's own bomb limit.
        raise ImageTooLarge(f"{what} is too large to decode: {exc}") from exc
    except OSError as exc:  # PIL.UnidentifiedImageError is an OSError
        raise CodecError(
            f"{len(data)} bytes are not a readable {what} in a supported format "
            f"({', '.join(formats)})"
        ) from exc
    except _PIL_PARSE_ERRORS as exc:
        raise CodecError(f"{len(data)} bytes are not a readable {what}: {exc}") from exc
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        image.close()
        raise ImageTooLarge(
            f"{what} is {width}x{height} = {width * height} pixels, "
            f"over the limit of {max_pixels} pixels"
        )
    try:
        if single_upright:
            _check_single_upright(image)
        image.load()
    except CodecError:
        image.close()
        raise
    except _PIL_FAILURES as exc:
        image.close()
        raise CodecError(
            f"{image.format} {what} ({width}x{height}) is truncated or corrupt: {exc}"
        ) from exc
    return image


_EXIF_ORIENTATION = 0x0112


def _check_single_upright(image: Image.Image) -> None:
    """Refuse several frames (a camera's MPO aside) and an EXIF or TIFF orientation other
    than upright (:func:`decode_image`)."""
    try:
        # Counting frames reads every frame header; a cut or broken one raises.
        frames = getattr(image, "n_frames", 1)
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except _PIL_FAILURES as exc:
        raise CodecError(
            f"{image.format} image is truncated or corrupt (its frames or EXIF data): {exc}"
        ) from exc
    if frames > 1 and image.format != "MPO":
        raise CodecError(f"{image.format} image has {frames} frames; upload one image per frame")
    if orientation not in (0, 1):
        tag = "TIFF" if image.format == "TIFF" else "EXIF"
        raise CodecError(
            f"image has {tag} orientation {orientation} (turned or mirrored); store its "
            f"pixels upright (e.g. PIL.ImageOps.exif_transpose) and upload it again"
        )


def _scale_to_uint8(values: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    """Map a wide greyscale array to uint8 (see :func:`decode_image`)."""
    scaled = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    np.clip(scaled, 0.0, None, out=scaled)
    peak = float(scaled.max())
    if peak > 255.0:
        scaled *= 255.0 / peak
    return np.rint(scaled).astype(np.uint8)


def _save_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(
        buffer,
        format="PNG",
        compress_level=PNG_COMPRESS_LEVEL,
        compress_type=PNG_COMPRESS_STRATEGY,
    )
    return buffer.getvalue()


def _save_grey_png(levels: npt.NDArray[np.uint8]) -> bytes:
    ok, encoded = cv2.imencode(".png", levels, list(GREY_PNG_FLAGS))
    if not ok:
        raise ValueError(f"OpenCV could not encode a {levels.shape} greyscale PNG")
    return encoded.tobytes()


def _check_not_empty(shape: tuple[int, ...]) -> None:
    if 0 in shape[:2]:
        raise ValueError(f"array must have H and W of at least 1, got shape {shape}")


def _check_palette(palette: Sequence[int]) -> list[int]:
    values = list(palette)
    if len(values) != _PALETTE_LENGTH or not all(_is_int(v) and 0 <= v <= 255 for v in values):
        raise ValueError(
            f"palette must be {_PALETTE_LENGTH} ints in 0..255 (r, g, b per index), "
            f"got {len(values)} values"
        )
    return values


def _is_int(value: object) -> TypeGuard[int | np.integer[Any]]:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _check_fits(value: object, dtype: type[np.integer[Any]], name: str) -> None:
    info = np.iinfo(dtype)
    if not _is_int(value) or not info.min <= int(value) <= info.max:
        raise ValueError(
            f"{name} {value!r} must be an int in {info.min}..{info.max} ({info.dtype})"
        )


def _check_size_argument(size: object) -> tuple[int, int]:
    if (
        not isinstance(size, tuple | list)
        or len(size) != 2
        or not all(_is_int(n) and n > 0 for n in size)
    ):
        raise ValueError(f"size must be (H, W), two positive ints, got {size!r}")
    return int(size[0]), int(size[1])


def _rle_size_and_check(
    rle: CocoRle | Mapping[str, object], expected: tuple[int, int] | None
) -> tuple[int, int]:
    """The RLE's ``(H, W)``, after checking its shape and keys."""
    if isinstance(rle, CocoRle):
        raw_size: object = rle.size
    elif isinstance(rle, Mapping):
        missing = sorted({"size", "counts"} - set(rle.keys()))
        if missing:
            raise CodecError(f"RLE lacks the keys {missing}; it needs 'size' and 'counts'")
        raw_size = rle["size"]
    else:
        raise CodecError(
            f"an RLE must be a mapping with 'size' and 'counts', got {type(rle).__name__}"
        )
    if (
        not isinstance(raw_size, list | tuple)
        or len(raw_size) != 2
        or not all(_is_int(n) and n > 0 for n in raw_size)
    ):
        raise CodecError(f"RLE size must be [H, W], two positive ints, got {raw_size!r}")
    height, width = int(raw_size[0]), int(raw_size[1])
    if expected is not None and (height, width) != _check_size_argument(expected):
        raise CodecError(
            f"RLE size {height}x{width} does not match the expected {expected[0]}x{expected[1]}"
        )
    return height, width


def _check_uncompressed_counts(counts: list[object]) -> list[int]:
    runs: list[int] = []
    for index, run in enumerate(counts):
        if not _is_int(run) or int(run) < 0:
            raise CodecError(f"RLE run {index} is {run!r}; runs must be non-negative ints")
        runs.append(int(run))
    return runs


def _parse_compressed_counts(counts: str, total: int) -> list[int]:
    """Run lengths of a compressed COCO RLE string (maskApi.c ``rleFrString``).

    Each run is stored as 5-bit chunks, least significant first, one character
    each (``chr(48 + chunk)``); bit 0x20 marks that another chunk follows, and
    bit 0x10 of the last chunk is the sign. From the fourth run on, the stored
    value is the difference to the run two places earlier.
    """
    runs: list[int] = []
    covered = value = shift = 0
    for position, char in enumerate(counts):
        chunk = ord(char) - _RLE_CHAR_OFFSET
        if not 0 <= chunk <= 0x3F:
            raise CodecError(
                f"RLE counts hold {char!r} at position {position}; only '0'..'o' are allowed"
            )
        value |= (chunk & 0x1F) << shift
        shift += 5
        if chunk & 0x20:
            if shift >= 5 * _RLE_MAX_CHUNKS:
                raise CodecError(f"RLE run at position {position} is too long to be a count")
            continue
        if chunk & 0x10:
            value -= 1 << shift
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            raise CodecError(f"RLE run {len(runs)} decodes to a negative length {value}")
        covered += value
        if covered > total:
            raise CodecError(f"RLE runs cover more than the {total} pixels of the mask")
        runs.append(value)
        value = shift = 0
    if shift:
        raise CodecError("RLE counts end in the middle of a run")
    return runs


def encode_schema_mask(mask: npt.NDArray[np.integer[Any]], schema: LabelSchema) -> bytes:
    """Encode a (H, W) index mask in the schema's dtype, with its palette for viewing."""
    if schema.mask_dtype is np.uint8:
        return encode_index_png(mask.astype(np.uint8), schema.palette())
    return encode_index_png(mask.astype(np.uint16))
