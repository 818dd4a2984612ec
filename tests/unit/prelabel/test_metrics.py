"""Tests of prelabel.metrics: confusion-matrix IoU and draft-vs-correction scores."""

from __future__ import annotations

import json

import numpy as np
import pytest

from prelabel.metrics import (
    DraftComparison,
    compare_masks,
    confusion_matrix,
    iou_per_class,
    mask_agreement,
    mean_iou,
    region_count,
)

IGNORE = 255

# Target (correction) and prediction (draft), 4x4, classes 0..2, two ignored pixels.
TARGET = np.array(
    [
        [0, 0, 1, 1],
        [0, 0, 1, 1],
        [2, 2, 1, 1],
        [2, 2, IGNORE, IGNORE],
    ],
    dtype=np.uint8,
)
PREDICTION = np.array(
    [
        [0, 1, 1, 1],
        [0, 0, 1, 1],
        [2, 1, 1, 1],
        [1, 2, 0, 2],
    ],
    dtype=np.uint8,
)
# Rows target, columns prediction, over the 14 labelled pixels.
EXPECTED_CONFUSION = [
    [3, 1, 0],
    [0, 6, 0],
    [0, 2, 2],
]
# IoU = diagonal / (row sum + column sum - diagonal):
# class 0: 3 / (4 + 3 - 3), class 1: 6 / (6 + 9 - 6), class 2: 2 / (4 + 2 - 2).
EXPECTED_IOU = {0: 3 / 4, 1: 6 / 9, 2: 2 / 4}


def test_confusion_matrix_known_answer() -> None:
    confusion = confusion_matrix(PREDICTION, TARGET, num_classes=3, ignore_index=IGNORE)

    assert confusion.dtype == np.int64
    assert confusion.tolist() == EXPECTED_CONFUSION


def test_confusion_matrix_leaves_out_ignored_target_pixels() -> None:
    target = np.full((4, 4), IGNORE, dtype=np.uint8)
    target[0, 0] = 1

    confusion = confusion_matrix(
        np.ones((4, 4), np.uint8), target, num_classes=2, ignore_index=IGNORE
    )

    assert confusion.tolist() == [[0, 0], [0, 1]]


def test_confusion_matrices_of_images_add_up() -> None:
    rng = np.random.default_rng(0)
    first = rng.integers(0, 4, (2, 64, 64), dtype=np.uint8)
    second = rng.integers(0, 4, (2, 64, 64), dtype=np.uint8)

    summed = confusion_matrix(
        first[0], first[1], num_classes=4, ignore_index=IGNORE
    ) + confusion_matrix(second[0], second[1], num_classes=4, ignore_index=IGNORE)
    together = confusion_matrix(
        np.concatenate([first[0], second[0]]),
        np.concatenate([first[1], second[1]]),
        num_classes=4,
        ignore_index=IGNORE,
    )

    np.testing.assert_array_equal(summed, together)
    assert int(summed.sum()) == 2 * 64 * 64


@pytest.mark.parametrize("which", ["prediction", "target"])
def test_confusion_matrix_rejects_values_outside_the_classes(which: str) -> None:
    bad = TARGET.copy()
    bad[0, 0] = 3
    prediction, target = (bad, TARGET) if which == "prediction" else (PREDICTION, bad)

    with pytest.raises(ValueError, match=rf"{which} holds class ids \[3\] outside 0..2"):
        confusion_matrix(prediction, target, num_classes=3, ignore_index=IGNORE)


def test_confusion_matrix_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        confusion_matrix(PREDICTION[:3], TARGET, num_classes=3, ignore_index=IGNORE)
    with pytest.raises(ValueError, match="integer class ids"):
        confusion_matrix(
            PREDICTION.astype(np.float32),
            TARGET,
            num_classes=3,
            ignore_index=IGNORE,
        )
    with pytest.raises(ValueError, match="num_classes must be at least 1"):
        confusion_matrix(PREDICTION, TARGET, num_classes=0, ignore_index=IGNORE)


def test_iou_per_class_and_mean_known_answer() -> None:
    confusion = np.array(EXPECTED_CONFUSION, dtype=np.int64)

    assert iou_per_class(confusion) == pytest.approx(EXPECTED_IOU)
    assert mean_iou(confusion) == pytest.approx((3 / 4 + 2 / 3 + 1 / 2) / 3)


def test_iou_leaves_out_absent_classes() -> None:
    # Class 1 is in neither target nor prediction; class 2 only in the prediction.
    confusion = np.array([[5, 0, 1], [0, 0, 0], [0, 0, 0]], dtype=np.int64)

    assert iou_per_class(confusion) == {0: 5 / 6, 2: 0.0}
    assert mean_iou(confusion) == pytest.approx(5 / 12)


def test_mean_iou_is_one_when_nothing_is_present() -> None:
    assert iou_per_class(np.zeros((3, 3), dtype=np.int64)) == {}
    assert mean_iou(np.zeros((3, 3), dtype=np.int64)) == 1.0


def test_iou_rejects_non_square_matrix() -> None:
    with pytest.raises(ValueError, match="square"):
        iou_per_class(np.zeros((2, 3), dtype=np.int64))


def test_compare_masks_known_answer() -> None:
    result = compare_masks(
        PREDICTION, TARGET, num_classes=3, ignore_index=IGNORE, acceptance_threshold=0.2
    )

    assert result.per_class_iou == pytest.approx(EXPECTED_IOU)
    assert result.mean_iou == pytest.approx(23 / 36)
    assert result.changed_pixels == 3  # (0, 1), (2, 1), (3, 0); ignored pixels do not count
    assert result.pixel_agreement == pytest.approx(11 / 14)
    assert result.changed_pixel_fraction == pytest.approx(3 / 14)
    assert result.changed_regions == 2  # (2, 1) and (3, 0) touch at a corner
    assert result.accepted is False  # 3/14 > 0.2


def test_mask_agreement_is_the_iou_of_compare_masks_and_names_the_masks_it_rejects() -> None:
    agreement = mask_agreement(PREDICTION, TARGET, num_classes=3, ignore_index=IGNORE)

    assert agreement.per_class_iou == pytest.approx(EXPECTED_IOU)
    assert agreement.mean_iou == pytest.approx(23 / 36)
    unlabelled = TARGET.copy()
    unlabelled[0, :] = IGNORE  # second mask ignores the top row; the first's pixels there
    missed = mask_agreement(unlabelled, TARGET, num_classes=3, ignore_index=IGNORE)
    assert missed.per_class_iou == pytest.approx({0: 2 / 4, 1: 4 / 6, 2: 1.0})
    with pytest.raises(ValueError, match=r"first holds class ids \[7, 8, 9\]"):
        mask_agreement(TARGET + 7, TARGET, num_classes=3, ignore_index=IGNORE)
    with pytest.raises(ValueError, match="shapes differ"):
        mask_agreement(TARGET, TARGET[:3], num_classes=3, ignore_index=IGNORE)


def test_compare_masks_threshold_edge_is_accepted() -> None:
    at_edge = compare_masks(
        PREDICTION, TARGET, num_classes=3, ignore_index=IGNORE, acceptance_threshold=3 / 14
    )
    just_below = compare_masks(
        PREDICTION,
        TARGET,
        num_classes=3,
        ignore_index=IGNORE,
        acceptance_threshold=np.nextafter(3 / 14, 0.0),
    )

    assert at_edge.accepted is True
    assert just_below.accepted is False


def test_compare_masks_counts_separate_blobs() -> None:
    correction = np.zeros((8, 8), dtype=np.uint8)
    draft = correction.copy()
    draft[0:2, 0:2] = 1
    draft[6, 6] = 1

    result = compare_masks(
        draft, correction, num_classes=2, ignore_index=IGNORE, acceptance_threshold=0.1
    )

    assert result.changed_pixels == 5
    assert result.changed_regions == 2
    assert result.changed_pixel_fraction == 5 / 64
    assert result.accepted is True
    assert result.per_class_iou == {0: 59 / 64, 1: 0.0}


def test_compare_masks_all_ignored() -> None:
    correction = np.full((8, 8), IGNORE, dtype=np.uint8)

    result = compare_masks(
        np.zeros((8, 8), np.uint8),
        correction,
        num_classes=2,
        ignore_index=IGNORE,
        acceptance_threshold=0.0,
    )

    assert result.pixel_agreement == 1.0
    assert result.changed_pixel_fraction == 0.0
    assert result.changed_pixels == 0
    assert result.changed_regions == 0
    assert result.per_class_iou == {}
    assert result.mean_iou == 1.0
    assert result.accepted is True


def test_compare_masks_counts_unlabelled_draft_pixels_as_changed() -> None:
    correction = np.ones((4, 4), dtype=np.uint8)
    draft = correction.copy()
    draft[0, :] = IGNORE  # the draft left the top row for the annotator

    result = compare_masks(
        draft, correction, num_classes=2, ignore_index=IGNORE, acceptance_threshold=0.5
    )

    assert result.changed_pixels == 4
    assert result.pixel_agreement == 12 / 16
    assert result.changed_regions == 1
    assert result.per_class_iou == {1: 12 / 16}  # the 4 missed pixels enlarge the union


def test_compare_masks_with_sparse_class_ids() -> None:
    correction = np.zeros((64, 64), dtype=np.uint16)
    correction[:, 32:] = 60000
    draft = np.zeros((64, 64), dtype=np.uint16)

    result = compare_masks(
        draft, correction, num_classes=60001, ignore_index=65535, acceptance_threshold=0.5
    )

    assert result.per_class_iou == {0: 0.5, 60000: 0.0}
    assert result.changed_pixels == 32 * 64
    assert result.changed_regions == 1
    assert result.accepted is True


def test_iou_is_the_same_whether_the_classes_are_few_or_sparse() -> None:
    """Few classes take the full confusion matrix, many the classes present only."""
    rng = np.random.default_rng(3)
    first = rng.choice([0, 1, 2, 4, IGNORE], size=(32, 32)).astype(np.uint8)
    second = rng.choice([0, 1, 3, 4, IGNORE], size=(32, 32)).astype(np.uint8)

    few = mask_agreement(first, second, num_classes=5, ignore_index=IGNORE)
    sparse = mask_agreement(first, second, num_classes=300, ignore_index=IGNORE)

    assert few == sparse
    assert set(few.per_class_iou) == {0, 1, 2, 3, 4}


def test_compare_masks_rejects_bad_arguments() -> None:
    masks = np.zeros((4, 4), dtype=np.uint8)
    kwargs = {"num_classes": 2, "ignore_index": IGNORE}

    with pytest.raises(ValueError, match="shapes differ"):
        compare_masks(masks, masks[:3], acceptance_threshold=0.1, **kwargs)
    with pytest.raises(ValueError, match=r"must be \(H, W\)"):
        compare_masks(masks[None], masks[None], acceptance_threshold=0.1, **kwargs)
    with pytest.raises(ValueError, match="acceptance_threshold"):
        compare_masks(masks, masks, acceptance_threshold=1.5, **kwargs)
    with pytest.raises(ValueError, match=r"draft holds class ids \[7\]"):
        compare_masks(masks + 7, masks, acceptance_threshold=0.1, **kwargs)


def test_region_count_uses_eight_connectivity() -> None:
    diagonal = np.eye(4, dtype=np.bool_)
    apart = np.zeros((8, 8), dtype=np.bool_)
    apart[0, 0] = apart[0, 2] = apart[5:7, 5:7] = True

    assert region_count(np.zeros((8, 8), dtype=np.bool_)) == 0
    assert region_count(diagonal) == 1
    assert region_count(apart) == 3
    with pytest.raises(ValueError, match="bool"):
        region_count(diagonal.astype(np.uint8))


def test_draft_comparison_dict_round_trip() -> None:
    result = compare_masks(
        PREDICTION, TARGET, num_classes=3, ignore_index=IGNORE, acceptance_threshold=0.2
    )

    data = result.to_dict()
    restored = DraftComparison.from_dict(json.loads(json.dumps(data)))

    per_class = data["per_class_iou"]
    assert isinstance(per_class, dict) and set(per_class) == {"0", "1", "2"}
    assert restored == result


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("per_class_iou", [0.5]),
        ("per_class_iou", {"road": 0.5}),
        ("mean_iou", "high"),
        ("changed_pixels", -1),
        ("changed_regions", 1.5),
        ("accepted", 1),
    ],
)
def test_draft_comparison_from_dict_rejects_bad_values(key: str, value: object) -> None:
    data = DraftComparison(
        per_class_iou={0: 1.0},
        mean_iou=1.0,
        pixel_agreement=1.0,
        changed_pixel_fraction=0.0,
        changed_pixels=0,
        changed_regions=0,
        accepted=True,
    ).to_dict()
    data[key] = value

    with pytest.raises(ValueError, match=r"per_class_iou|mean_iou|changed_|accepted"):
        DraftComparison.from_dict(data)


def test_strokes_count_changed_regions_per_target_class() -> None:
    correction = np.zeros((6, 8), dtype=np.uint8)
    correction[1:3, 1:7] = 1  # one region the draft missed, half class 1 ...
    correction[1:3, 4:7] = 2  # ... half class 2: two strokes, one changed region
    correction[5, 7] = 1  # an isolated pixel far from the rest: a third stroke
    draft = np.zeros_like(correction)

    result = compare_masks(
        draft, correction, num_classes=3, ignore_index=IGNORE, acceptance_threshold=0.0
    )

    assert (result.changed_regions, result.strokes, result.brush_strokes) == (2, 3, 3)
    exact = compare_masks(
        correction, correction, num_classes=3, ignore_index=IGNORE, acceptance_threshold=0.0
    )
    assert exact.strokes == 0


def test_comparisons_stored_before_strokes_existed_still_load() -> None:
    stored = compare_masks(
        PREDICTION, TARGET, num_classes=3, ignore_index=IGNORE, acceptance_threshold=0.2
    ).to_dict()
    del stored["strokes"], stored["brush_strokes"]

    restored = DraftComparison.from_dict(stored)
    assert restored.strokes is None and restored.brush_strokes is None


def test_a_brush_paints_a_broken_sliver_in_one_stroke() -> None:
    correction = np.zeros((8, 40), dtype=np.uint8)
    correction[3, :] = 1  # a one-pixel line of class 1 along a border ...
    draft = correction.copy()
    draft[3, ::4] = 0  # ... that the draft misses at every fourth pixel: ten fragments

    result = compare_masks(
        draft, correction, num_classes=2, ignore_index=IGNORE, acceptance_threshold=0.0
    )

    assert (result.strokes, result.brush_strokes) == (10, 1)
