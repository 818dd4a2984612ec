"""CVAT mask shapes: the layout of CVAT's detectors, decoded with cvat-sdk's own helpers."""

from __future__ import annotations

import base64

import numpy as np
import numpy.typing as npt
import pytest
from cvat_sdk.masks import decode_mask, encode_mask

from prelabel.errors import CodecError
from prelabel.integrations.cvat_shapes import (
    ClassRegion,
    DetectorRequest,
    DetectorShape,
    class_regions,
    detector_shapes,
)
from prelabel.schema import LabelSchema
from tests.synthetic import SHAPES_CLASSES, shapes_sample

SCHEMA = LabelSchema.model_validate({"classes": SHAPES_CLASSES})


def cvat_server_points(mask_values: list[int]) -> list[int]:
    """What CVAT's server stores for a detector's mask shape.

    ``cvat/apps/lambda_manager/views.py`` passes the crop to datumaro's ``mask_to_rle``
    (run lengths of the flat crop, first run of zeros) and appends the box: the
    ``points`` format that ``cvat_sdk.masks.decode_mask`` reads.
    """
    *crop, xtl, ytl, xbr, ybr = mask_values
    flat = np.asarray(crop) != 0
    changes = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    return [*([0] if flat[0] else []), *runs, xtl, ytl, xbr, ybr]


def decode_shapes(shapes: list[DetectorShape], height: int, width: int) -> npt.NDArray[np.uint8]:
    """Paint detector shapes over background (0) through CVAT's own decoding."""
    mask = np.zeros((height, width), dtype=np.uint8)
    for shape in shapes:
        bitmap = decode_mask(cvat_server_points(shape.mask), image_width=width, image_height=height)
        mask[bitmap] = SCHEMA.class_by_name(shape.label).id
    return mask


def test_regions_follow_cvat_reference_layout() -> None:
    _, mask = shapes_sample(3)
    (disk,) = class_regions(mask, [1])
    ys, xs = np.nonzero(mask == 1)
    assert disk.box == (xs.min(), ys.min(), xs.max(), ys.max())
    xtl, ytl, xbr, ybr = disk.box
    # to_cvat_mask in cvat-ai/cvat: inclusive box, crop flattened row by row, then the box.
    expected = [*(mask[ytl : ybr + 1, xtl : xbr + 1] == 1).astype(int).flat, xtl, ytl, xbr, ybr]
    assert disk.to_nuclio_mask() == expected
    assert disk.confidence is None


def test_regions_skip_absent_classes_and_average_confidence() -> None:
    _, mask = shapes_sample(4)
    confidence = np.linspace(0, 1, mask.size, dtype=np.float32).reshape(mask.shape)
    regions = class_regions(mask, [2, 7, 1], confidence)
    assert [r.class_id for r in regions] == [2, 1]
    for region in regions:
        assert region.confidence == pytest.approx(float(confidence[mask == region.class_id].mean()))


def test_nuclio_mask_round_trips_and_matches_encode_mask() -> None:
    _, mask = shapes_sample(5)
    for region in class_regions(mask, [1, 2]):
        back = ClassRegion.from_nuclio_mask(region.to_nuclio_mask(), region.class_id)
        assert back.box == region.box
        assert np.array_equal(back.full_bitmap(64, 64), mask == region.class_id)
        # CVAT's server-side conversion equals cvat-sdk's encode_mask on the same box.
        full = region.full_bitmap(64, 64)
        sdk_points = encode_mask(full, region.exclusive_box)
        assert cvat_server_points(region.to_nuclio_mask()) == sdk_points


def test_reference_handlers_0_255_crops_are_accepted() -> None:
    region = ClassRegion.from_nuclio_mask([0, 255, 255, 0, 3, 4, 4, 5], class_id=1)
    assert region.box == (3, 4, 4, 5)
    assert region.bitmap.tolist() == [[False, True], [True, False]]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([1, 2, 3, 4], "needs a crop and a box"),
        ([1, 5, 0, 4, 0], "not a box"),
        ([1, -1, 0, -1, 0], "not a box"),
        ([1, 1, 1, 0, 0, 1, 1], "needs 4"),
    ],
)
def test_malformed_nuclio_masks_are_codec_errors(values: list[int], message: str) -> None:
    with pytest.raises(CodecError, match=message):
        ClassRegion.from_nuclio_mask(values, class_id=1)


def test_box_outside_the_image_is_a_codec_error() -> None:
    region = ClassRegion.from_nuclio_mask([1, 9, 9, 9, 9], class_id=1)
    with pytest.raises(CodecError, match="outside the 8x8 image"):
        region.full_bitmap(8, 8)


def test_detector_shapes_decode_back_to_the_mask_without_background() -> None:
    _, mask = shapes_sample(6)
    confidence = np.full(mask.shape, 0.8, dtype=np.float32)
    shapes = detector_shapes(mask, confidence, SCHEMA, threshold=0.0)
    assert [s.label for s in shapes] == ["disk", "square"]
    assert all(s.type == "mask" and s.points == [] for s in shapes)
    assert all(s.confidence == pytest.approx(0.8) for s in shapes)
    assert np.array_equal(decode_shapes(shapes, 64, 64), mask)


def test_detector_shapes_threshold_is_inclusive() -> None:
    _, mask = shapes_sample(7)
    confidence = np.where(mask == 1, 0.9, 0.5).astype(np.float32)
    kept = detector_shapes(mask, confidence, SCHEMA, threshold=0.5)
    assert [s.label for s in kept] == ["disk", "square"]
    assert [s.label for s in detector_shapes(mask, confidence, SCHEMA, threshold=0.6)] == ["disk"]


def test_request_decodes_base64_or_raises_codec_error() -> None:
    request = DetectorRequest(image=base64.b64encode(b"\x89PNG").decode())
    assert request.image_bytes() == b"\x89PNG"
    assert request.threshold == 0.5
    with pytest.raises(CodecError, match="not valid base64"):
        DetectorRequest(image="not base64!").image_bytes()
