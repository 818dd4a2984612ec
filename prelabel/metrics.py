"""Draft-vs-correction metrics and confusion-matrix IoU.

Two uses share this module. The service scores each correction against the
draft it started from (:func:`compare_masks`): how much did the annotator have
to change? Training evaluation accumulates :func:`confusion_matrix` over many
images, then reduces it with :func:`iou_per_class` and :func:`mean_iou`.

In both, the *target* (correction, ground truth) decides which pixels count:
pixels whose target is the ignore index are left out everywhere.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

logger = logging.getLogger(__name__)

_EIGHT_CONNECTED = np.ones((3, 3), dtype=np.bool_)
BRUSH_RADIUS_PX = 2
"""The brush ``brush_strokes`` assumes: 5 px wide, small for a 200-px slice."""
_DENSE_CONFUSION_MAX_CLASSES = 256
"""Up to this many classes a full confusion matrix is cheaper than finding the ones present."""


def confusion_matrix(
    prediction: npt.NDArray[np.integer[Any]],
    target: npt.NDArray[np.integer[Any]],
    *,
    num_classes: int,
    ignore_index: int,
) -> npt.NDArray[np.int64]:
    """Count pixels by (target class, predicted class).

    Pixels whose target is ``ignore_index`` are not counted. Pixels whose
    prediction is ``ignore_index`` (a draft left unlabelled) while the target is
    a class have no column, so they are not counted either; :func:`compare_masks`
    still counts them as changed. The matrix takes ``8 * num_classes**2`` bytes.

    Args:
        prediction: Integer class ids of any shape, values in ``0..num_classes-1``
            or ``ignore_index``.
        target: Integer class ids, same shape and value range as ``prediction``.
        num_classes: Number of classes (highest class id plus one), at least 1.
        ignore_index: The id of unlabelled pixels.

    Returns:
        ``(num_classes, num_classes)`` int64; rows are target classes, columns
        predicted classes. Matrices of several images can be summed.

    Raises:
        ValueError: Shapes differ, dtypes are not integer, ``num_classes`` is
            below 1, or a value other than ``ignore_index`` is outside
            ``0..num_classes-1``.
    """
    _check_pair(prediction, target, num_classes)
    predicted, actual = _target_pixels(prediction, target, num_classes, ignore_index)
    labelled = predicted != ignore_index
    pairs = actual[labelled] * num_classes + predicted[labelled]
    counts = np.bincount(pairs, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def iou_per_class(confusion: npt.NDArray[np.integer[Any]]) -> dict[int, float]:
    """Intersection over union of each class present in target or prediction.

    Args:
        confusion: ``(C, C)`` non-negative counts, rows target, columns
            prediction, as :func:`confusion_matrix` returns.

    Returns:
        ``{class_id: iou}`` with IoU in [0, 1], for the classes whose union is
        non-zero; classes in neither target nor prediction are left out.

    Raises:
        ValueError: ``confusion`` is not a square 2-D integer matrix.
    """
    _check_confusion(confusion)
    class_ids = np.arange(confusion.shape[0])
    return _iou(confusion, class_ids, missed=np.zeros(confusion.shape[0], dtype=np.int64))


def mean_iou(confusion: npt.NDArray[np.integer[Any]]) -> float:
    """Mean of :func:`iou_per_class` over the classes present.

    Args:
        confusion: ``(C, C)`` counts, rows target, columns prediction.

    Returns:
        The mean IoU in [0, 1]. 1.0 when no class is present (every pixel
        ignored): there is nothing to disagree on.

    Raises:
        ValueError: ``confusion`` is not a square 2-D integer matrix.
    """
    return _mean(iou_per_class(confusion))


@dataclass(frozen=True)
class DraftComparison:
    """How a correction differs from the draft it started from.

    Attributes:
        per_class_iou: IoU of draft vs correction per class present in either.
        mean_iou: Mean of ``per_class_iou`` (1.0 if it is empty).
        pixel_agreement: Share of labelled pixels (correction not the ignore
            index) where draft and correction agree, in [0, 1].
        changed_pixel_fraction: ``1 - pixel_agreement``: the share the annotator changed.
        changed_pixels: Number of labelled pixels that differ.
        changed_regions: Connected regions (8-connectivity) of changed pixels.
        strokes: Paint strokes needed: connected regions of changed pixels counted
            per class of the correction (a region that must become two classes is
            two strokes). An empty draft's strokes are the effort of labeling from
            scratch. None for comparisons stored before this measure existed.
        brush_strokes: ``strokes`` for a brush of radius ``BRUSH_RADIUS_PX``: changed
            fragments of one class closer than the brush's width are one stroke (a
            sliver broken along a border is painted in one pass). None before it existed.
        accepted: Whether ``changed_pixel_fraction`` is within the acceptance
            threshold, i.e. the draft was good enough to accept nearly as is.
        scratch_changed_pixels: What an empty draft (background only) would have left
            to change: the labelled pixels of the correction that are not background.
            None when not measured (no background given, or stored before it existed).
        scratch_changed_regions: The connected regions (8-connectivity) of those pixels.
    """

    per_class_iou: dict[int, float]
    mean_iou: float
    pixel_agreement: float
    changed_pixel_fraction: float
    changed_pixels: int
    changed_regions: int
    accepted: bool
    strokes: int | None = None
    brush_strokes: int | None = None
    scratch_changed_pixels: int | None = None
    scratch_changed_regions: int | None = None

    def to_dict(self) -> dict[str, object]:
        """A JSON-friendly dict; class ids become string keys."""
        return {
            "per_class_iou": {str(k): v for k, v in self.per_class_iou.items()},
            "mean_iou": self.mean_iou,
            "pixel_agreement": self.pixel_agreement,
            "changed_pixel_fraction": self.changed_pixel_fraction,
            "changed_pixels": self.changed_pixels,
            "changed_regions": self.changed_regions,
            "accepted": self.accepted,
            "strokes": self.strokes,
            "brush_strokes": self.brush_strokes,
            "scratch_changed_pixels": self.scratch_changed_pixels,
            "scratch_changed_regions": self.scratch_changed_regions,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> DraftComparison:
        """Rebuild a comparison from :meth:`to_dict` output.

        Raises:
            ValueError: A key is missing or has the wrong type.
        """
        per_class = data.get("per_class_iou")
        if not isinstance(per_class, Mapping):
            raise ValueError(f"per_class_iou must be a mapping, got {per_class!r}")
        try:
            per_class_iou = {int(k): _number(v, "per_class_iou") for k, v in per_class.items()}
        except (TypeError, ValueError) as exc:
            raise ValueError(f"per_class_iou keys must be class ids, got {per_class!r}") from exc
        return cls(
            per_class_iou=per_class_iou,
            mean_iou=_number(data.get("mean_iou"), "mean_iou"),
            pixel_agreement=_number(data.get("pixel_agreement"), "pixel_agreement"),
            changed_pixel_fraction=_number(
                data.get("changed_pixel_fraction"), "changed_pixel_fraction"
            ),
            changed_pixels=_count(data.get("changed_pixels"), "changed_pixels"),
            changed_regions=_count(data.get("changed_regions"), "changed_regions"),
            accepted=_flag(data.get("accepted"), "accepted"),
            strokes=_optional_count(data, "strokes"),
            brush_strokes=_optional_count(data, "brush_strokes"),
            scratch_changed_pixels=_optional_count(data, "scratch_changed_pixels"),
            scratch_changed_regions=_optional_count(data, "scratch_changed_regions"),
        )


@dataclass(frozen=True)
class MaskAgreement:
    """How far two masks of one image agree, class by class (e.g. two annotators').

    Attributes:
        per_class_iou: IoU per class present in either mask.
        mean_iou: Mean of ``per_class_iou`` (1.0 if it is empty).
    """

    per_class_iou: dict[int, float]
    mean_iou: float


def mask_agreement(
    first: npt.NDArray[np.integer[Any]],
    second: npt.NDArray[np.integer[Any]],
    *,
    num_classes: int,
    ignore_index: int,
) -> MaskAgreement:
    """IoU of two masks per class, the IoU part of :func:`compare_masks` alone (no
    connected regions: a small fraction of its cost).

    Pixels ``second`` leaves as ``ignore_index`` do not count; one that ``first`` leaves
    so while ``second`` labels it is missed in its class's IoU.

    Raises:
        ValueError: Shapes differ or are not 2-D, dtypes are not integer, or a value
            other than ``ignore_index`` is outside ``0..num_classes-1``.
    """
    return _agreement(first, second, num_classes, ignore_index, names=("first", "second"))


def compare_masks(
    draft: npt.NDArray[np.integer[Any]],
    correction: npt.NDArray[np.integer[Any]],
    *,
    num_classes: int,
    ignore_index: int,
    acceptance_threshold: float,
    background_id: int | None = None,
) -> DraftComparison:
    """Score a correction against the draft it was made from.

    Only pixels whose correction is not ``ignore_index`` count. A draft pixel
    left as ``ignore_index`` there counts as changed, and as missed in its
    class's IoU. IoU is computed over the classes present only, so sparse ids
    (up to 65534) cost no ``num_classes**2`` matrix.

    Args:
        draft: ``(H, W)`` integer class ids from the model.
        correction: ``(H, W)`` integer class ids after human editing.
        num_classes: Highest class id plus one.
        ignore_index: The id of unlabelled pixels.
        acceptance_threshold: Largest ``changed_pixel_fraction`` (in [0, 1]) at
            which the draft counts as accepted; equal is accepted.
        background_id: The class of an empty draft; given, the comparison also says
            what an empty draft would have left to change (``scratch_*``), the
            baseline of the effort a draft saves.

    Returns:
        The comparison. If every pixel is ignored: agreement 1.0, nothing
        changed, no IoU entries, mean IoU 1.0.

    Raises:
        ValueError: Shapes differ or are not 2-D, dtypes are not integer, the
            threshold is outside [0, 1], or a value other than ``ignore_index``
            is outside ``0..num_classes-1``.
    """
    if not 0.0 <= acceptance_threshold <= 1.0:
        raise ValueError(f"acceptance_threshold must be in [0, 1], got {acceptance_threshold}")
    iou = _agreement(draft, correction, num_classes, ignore_index, names=("draft", "correction"))
    labelled = correction != ignore_index
    changed = labelled & (draft != correction)
    labelled_pixels = int(np.count_nonzero(labelled))
    changed_pixels = int(np.count_nonzero(changed))
    fraction = changed_pixels / labelled_pixels if labelled_pixels else 0.0
    scratch = None if background_id is None else labelled & (correction != background_id)
    agreement = (labelled_pixels - changed_pixels) / labelled_pixels if labelled_pixels else 1.0
    return DraftComparison(
        per_class_iou=iou.per_class_iou,
        mean_iou=iou.mean_iou,
        pixel_agreement=agreement,
        changed_pixel_fraction=fraction,
        changed_pixels=changed_pixels,
        changed_regions=region_count(changed),
        accepted=bool(fraction <= float(acceptance_threshold)),
        strokes=stroke_count(changed, correction),
        brush_strokes=stroke_count(changed, correction, brush_radius_px=BRUSH_RADIUS_PX),
        scratch_changed_pixels=None if scratch is None else int(np.count_nonzero(scratch)),
        scratch_changed_regions=None if scratch is None else region_count(scratch),
    )


def stroke_count(
    changed: npt.NDArray[np.bool_],
    correction: npt.NDArray[np.integer[Any]],
    *,
    brush_radius_px: int = 0,
) -> int:
    """Regions to repaint, one per connected region of changed pixels of one target class.

    Args:
        changed: ``(H, W)`` bool, the pixels the annotator changed.
        correction: ``(H, W)`` class ids the changed pixels were painted with.
        brush_radius_px: with a brush of this radius, fragments of one class whose gap
            is under the brush's width (``2 * radius``) are one stroke: each class's
            changed pixels are dilated by the radius before regions are counted.
    """
    brush = _disk(brush_radius_px) if brush_radius_px > 0 else None
    total = 0
    for class_id in np.unique(correction[changed]):
        paint = changed & (correction == class_id)
        if brush is not None:
            paint = ndimage.binary_dilation(paint, structure=brush)
        total += region_count(paint)
    return total


def _disk(radius: int) -> npt.NDArray[np.bool_]:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return np.asarray(yy**2 + xx**2 <= radius**2, dtype=np.bool_)


def region_count(binary: npt.NDArray[np.bool_]) -> int:
    """Number of connected regions of True pixels, 8-connectivity.

    Args:
        binary: ``(H, W)`` bool mask.

    Returns:
        The number of regions; pixels touching at a corner share a region.

    Raises:
        ValueError: ``binary`` is not a 2-D bool array.
    """
    if binary.ndim != 2 or binary.dtype != np.bool_:
        raise ValueError(f"binary must be (H, W) bool, got shape {binary.shape} {binary.dtype}")
    _, count = ndimage.label(binary, structure=_EIGHT_CONNECTED)
    return int(count)


# --- private helpers ------------------------------------------------------


def _check_pair(
    prediction: npt.NDArray[Any],
    target: npt.NDArray[Any],
    num_classes: int,
    names: tuple[str, str] = ("prediction", "target"),
) -> None:
    if prediction.shape != target.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} shapes differ: {prediction.shape} vs {target.shape}"
        )
    for name, array in zip(names, (prediction, target), strict=True):
        if not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"{name} must hold integer class ids, got dtype {array.dtype}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")


def _target_pixels(
    prediction: npt.NDArray[np.integer[Any]],
    target: npt.NDArray[np.integer[Any]],
    num_classes: int,
    ignore_index: int,
    names: tuple[str, str] = ("prediction", "target"),
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(predicted, actual) int64 ids where the target is labelled, range-checked.

    ``predicted`` may still hold ``ignore_index``.
    """
    keep = target != ignore_index
    actual = target[keep].astype(np.int64)
    predicted = prediction[keep].astype(np.int64)
    _check_range(actual, num_classes, names[1])
    _check_range(predicted[predicted != ignore_index], num_classes, names[0])
    return predicted, actual


def _check_range(values: npt.NDArray[np.int64], num_classes: int, name: str) -> None:
    bad = values[(values < 0) | (values >= num_classes)]
    if bad.size:
        raise ValueError(
            f"{name} holds class ids {np.unique(bad)[:10].tolist()} outside "
            f"0..{num_classes - 1} (and not the ignore index)"
        )


def _agreement(
    first: npt.NDArray[np.integer[Any]],
    second: npt.NDArray[np.integer[Any]],
    num_classes: int,
    ignore_index: int,
    names: tuple[str, str],
) -> MaskAgreement:
    """Check a pair of (H, W) masks (``names`` in the errors) and take its IoU."""
    _check_pair(first, second, num_classes, names=names)
    if first.ndim != 2:
        raise ValueError(f"masks must be (H, W), got shape {first.shape}")
    per_class_iou = _sparse_iou(first, second, num_classes, ignore_index, names=names)
    return MaskAgreement(per_class_iou=per_class_iou, mean_iou=_mean(per_class_iou))


def _sparse_iou(
    draft: npt.NDArray[np.integer[Any]],
    correction: npt.NDArray[np.integer[Any]],
    num_classes: int,
    ignore_index: int,
    names: tuple[str, str],
) -> dict[int, float]:
    """Per-class IoU over the classes present: a confusion matrix of every class when
    there are few (one counting pass), of the classes present only when ids are sparse."""
    predicted, actual = _target_pixels(draft, correction, num_classes, ignore_index, names=names)
    labelled = predicted != ignore_index
    if num_classes <= _DENSE_CONFUSION_MAX_CLASSES:
        pairs = actual[labelled] * num_classes + predicted[labelled]
        dense = np.bincount(pairs, minlength=num_classes * num_classes)
        dense = dense.reshape(num_classes, num_classes)
        dense_missed = np.bincount(actual[~labelled], minlength=num_classes)
        present = np.flatnonzero(dense.sum(axis=0) + dense.sum(axis=1) + dense_missed)
        return _iou(dense[np.ix_(present, present)], present, missed=dense_missed[present])
    class_ids = np.union1d(actual, predicted[labelled])
    size = class_ids.size
    rows = np.searchsorted(class_ids, actual[labelled])
    cols = np.searchsorted(class_ids, predicted[labelled])
    confusion = np.bincount(rows * size + cols, minlength=size * size).reshape(size, size)
    missed = np.bincount(np.searchsorted(class_ids, actual[~labelled]), minlength=size)
    return _iou(confusion, class_ids, missed=missed)


def _iou(
    confusion: npt.NDArray[np.integer[Any]],
    class_ids: npt.NDArray[np.integer[Any]],
    *,
    missed: npt.NDArray[np.integer[Any]],
) -> dict[int, float]:
    """IoU per row of ``confusion``; ``missed`` adds target pixels with no prediction."""
    counts = confusion.astype(np.int64)
    intersection = np.diag(counts)
    union = counts.sum(axis=0) + counts.sum(axis=1) - intersection + missed
    return {
        int(class_id): float(intersection[i] / union[i])
        for i, class_id in enumerate(class_ids)
        if union[i] > 0
    }


def _check_confusion(confusion: npt.NDArray[Any]) -> None:
    if (
        confusion.ndim != 2
        or confusion.shape[0] != confusion.shape[1]
        or not np.issubdtype(confusion.dtype, np.integer)
    ):
        raise ValueError(
            f"confusion must be a square (C, C) integer matrix, got shape "
            f"{confusion.shape} {confusion.dtype}"
        )


def _mean(values: Mapping[int, float]) -> float:
    return float(np.mean(list(values.values()))) if values else 1.0


def _optional_count(data: Mapping[str, object], name: str) -> int | None:
    value = data.get(name)
    return None if value is None else _count(value, name)


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return float(value)


def _count(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return value


def _flag(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {value!r}")
    return value
