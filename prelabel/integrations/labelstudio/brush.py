"""Brush masks in Label Studio's RLE: the codec, the regions ``/predict`` answers, annotations.

Brush RLE is Label Studio's own format, encoded and decoded through
``label_studio_sdk``'s codec. Arrays are row-major ``(H, W)``. Brush RLE encodes
the flattened ``(H, W, 4)`` RGBA image Label Studio paints; the alpha channel is
the mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel

from prelabel.errors import CodecError, IntegrationError, ValidationFailed
from prelabel.integrations.labelstudio.label_config import LabelMapping
from prelabel.integrations.labelstudio.payloads import LsResult
from prelabel.schema import LabelSchema


def _brush() -> ModuleType:
    # label_studio_sdk's package __init__ loads its whole API client (pandas, nltk;
    # about 2.5 s), so the codec is imported when first used, not at service start.
    # It comes with the `integrations` extra, not with a service-only install.
    try:
        from label_studio_sdk.converter import brush
    except ImportError as exc:
        raise IntegrationError(
            "the Label Studio integration needs label-studio-sdk: "
            "pip install 'prelabel[integrations]'"
        ) from exc

    return brush


def encode_brush(binary: npt.NDArray[np.bool_]) -> list[int]:
    """Encode a binary mask as Label Studio brush RLE.

    Args:
        binary: ``(H, W)`` bool, True where the label is painted.

    Returns:
        The RLE bytes as ints (what ``value.rle`` holds), from
        ``label_studio_sdk.converter.brush.mask2rle``.

    Raises:
        ValueError: not a non-empty 2-D bool array.
    """
    if binary.ndim != 2 or binary.dtype != np.bool_ or binary.size == 0:
        raise ValueError(f"binary must be (H, W) bool, got shape {binary.shape} {binary.dtype}")
    rle = _brush().mask2rle(np.where(binary, np.uint8(255), np.uint8(0)))
    return [int(v) for v in rle]


def decode_brush(rle: Sequence[int], *, height: int, width: int) -> npt.NDArray[np.bool_]:
    """Decode Label Studio brush RLE into a binary mask of a known size.

    The header's value count is checked against ``height * width * 4`` before
    decoding, so a hostile RLE cannot make the decoder allocate at will.

    Args:
        rle: ``value.rle`` of a ``brushlabels`` result (ints 0..255).
        height: The image height the mask must have.
        width: The image width.

    Returns:
        ``(H, W)`` bool: alpha > 127.

    Raises:
        CodecError: not bytes, a size other than ``height x width``, truncated, or
            values wider than a byte.
    """
    try:
        data = bytes(rle)
    except (TypeError, ValueError) as exc:
        raise CodecError("brush RLE must be a list of ints in 0..255") from exc
    if len(data) < 4:
        raise CodecError(f"brush RLE of {len(data)} bytes is too short for its header")
    count = int.from_bytes(data[:4], "big")
    if count != height * width * 4:
        raise CodecError(
            f"brush RLE holds {count} values, expected {height}x{width}x4 = {height * width * 4}"
        )
    try:
        flat = _brush().decode_rle(data)
    except (ValueError, IndexError, OverflowError) as exc:
        # OverflowError: a word wider than a byte (numpy refuses it in a uint8 array).
        raise CodecError(f"brush RLE is truncated or corrupt: {exc}") from exc
    rgba = np.asarray(flat, dtype=np.uint8).reshape(height, width, 4)
    return np.ascontiguousarray(rgba[:, :, 3] > 127)


# --- what /predict answers ------------------------------------------------


class BrushValue(BaseModel):
    format: Literal["rle"] = "rle"
    rle: list[int]
    brushlabels: list[str]


class BrushRegion(BaseModel):
    """One ``brushlabels`` region: all pixels of one class."""

    id: str
    from_name: str
    to_name: str
    type: Literal["brushlabels"] = "brushlabels"
    original_width: int
    original_height: int
    image_rotation: int = 0
    value: BrushValue
    score: float


class TaskPrediction(BaseModel):
    """The prediction for one task: a region per class present, the mean confidence."""

    result: list[BrushRegion]
    score: float
    model_version: str


def draft_regions(
    mask: npt.NDArray[np.integer],
    confidence: npt.NDArray[np.float32],
    *,
    mapping: LabelMapping,
    background_id: int,
    region_prefix: str,
) -> list[BrushRegion]:
    """One brush region per class present in a draft, except the background.

    Args:
        mask: ``(H, W)`` class ids of the draft.
        confidence: ``(H, W)`` float32 in [0, 1]; a region's score is its mean.
        mapping: The labels of the Label Studio project; a class no label maps to
            is left out.
        background_id: The class that is not sent (unlabelled in Label Studio).
        region_prefix: Makes region ids unique across drafts (e.g. the draft id).
    """
    height, width = mask.shape
    regions: list[BrushRegion] = []
    for class_id in np.unique(mask).tolist():
        label = mapping.label_of(int(class_id))
        if class_id == background_id or label is None:
            continue
        binary = mask == class_id
        regions.append(
            BrushRegion(
                id=f"{region_prefix}-{class_id}",
                from_name=mapping.from_name,
                to_name=mapping.to_name,
                original_width=width,
                original_height=height,
                value=BrushValue(rle=encode_brush(binary), brushlabels=[label]),
                score=round(float(confidence[binary].mean()), 6),
            )
        )
    return regions


# --- what an annotation paints --------------------------------------------


def annotation_mask(
    results: Sequence[LsResult],
    *,
    mapping: LabelMapping,
    schema: LabelSchema,
    height: int,
    width: int,
) -> npt.NDArray[np.integer]:
    """The index mask an annotation paints: its brush regions, later ones on top.

    Pixels no region covers are background. Regions of other tags than the
    mapping's ``<BrushLabels>`` are ignored.

    Returns:
        ``(H, W)`` class ids, dtype ``schema.mask_dtype``.

    Raises:
        ValidationFailed: a region of another size than the image, or with not
            exactly one label.
        SchemaError: a label that maps to no class.
        CodecError: a brush region without RLE (or in another format), malformed RLE.
    """
    mask = np.full((height, width), schema.background, dtype=schema.mask_dtype)
    for result in results:
        if result.type.casefold() != "brushlabels" or result.from_name != mapping.from_name:
            continue
        value = result.value
        if value.rle is None or (value.format or "rle") != "rle":
            # Brush regions are RLE only; skipping one would record its pixels as background.
            found = "has no RLE" if value.rle is None else f"is in format {value.format!r}"
            raise CodecError(
                f"region {result.id} of <BrushLabels> {result.from_name!r} {found}; "
                f"Label Studio sends brush regions as RLE ('rle')"
            )
        if (result.original_height, result.original_width) != (height, width):
            raise ValidationFailed(
                f"region {result.id} is {result.original_width}x{result.original_height}, "
                f"the image is {width}x{height}"
            )
        labels = value.brushlabels or []
        if len(labels) != 1:
            raise ValidationFailed(f"region {result.id} has labels {labels}; expected exactly one")
        class_id = mapping.classes.get(labels[0])
        if class_id is None:
            class_id = schema.class_by_name(labels[0]).id
        mask[decode_brush(value.rle, height=height, width=width)] = class_id
    return mask
