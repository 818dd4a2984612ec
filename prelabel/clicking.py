"""The simulated clicking annotator: where the next click goes, and clicks to a target IoU.

One definition serves the benchmark (``bench.clicks``), the click model's training
(``training.interactive``: clicks placed in the error regions of the current
prediction, as RITM does) and its promotion gate (NoC@90 on held-out images), so
that the model is trained and judged with the clicks the benchmark counts.

A click goes at the centre of the largest error region of the current mask: the
maximum of the distance transform of the largest 8-connected component of missed
(positive click) or extra (negative click) pixels. NoC@85 / NoC@90 is the number
of clicks after which the class's IoU first reaches 0.85 / 0.90 (0 if the base
already does; ``max_clicks`` if it never does).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from prelabel.refinement import Clicks, Point, Refiner

MAX_CLICKS = 20
TARGETS = (0.85, 0.90)


def iou(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    """Intersection over union of two bool masks; 1.0 when both are empty."""
    union = int((a | b).sum())
    return 1.0 if union == 0 else float((a & b).sum()) / union


def next_click(
    predicted: npt.NDArray[np.bool_],
    truth: npt.NDArray[np.bool_],
    valid: npt.NDArray[np.bool_] | None = None,
) -> tuple[Point, bool] | None:
    """The simulated annotator's next click: ``((x, y), positive)``, or None without error.

    Args:
        predicted: ``(H, W)`` bool, the class's pixels now.
        truth: ``(H, W)`` bool, the class's true pixels.
        valid: ``(H, W)`` bool, pixels whose label is known (ignore-index pixels are
            not errors); None: all.

    Returns:
        The click at the point of the largest error region farthest from its border
        (image edges included), positive for a missed region, negative for an extra one.
    """
    best: tuple[int, npt.NDArray[np.bool_], bool] | None = None
    for error, positive in ((truth & ~predicted, True), (predicted & ~truth, False)):
        if valid is not None:
            error = error & valid
        count, labels, stats, _ = cv2.connectedComponentsWithStats(
            error.astype(np.uint8), connectivity=8
        )
        if count <= 1:
            continue
        largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        area = int(stats[largest, cv2.CC_STAT_AREA])
        if best is None or area > best[0]:
            best = (area, labels == largest, positive)
    if best is None:
        return None
    padded = np.pad(best[1], 1).astype(np.uint8)
    distance = cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return (int(x), int(y)), best[2]


def clicks_to_targets(
    refiner: Refiner,
    pixels: npt.NDArray[np.uint8],
    base: npt.NDArray[np.integer],
    truth: npt.NDArray[np.bool_],
    class_id: int,
    background: int,
    max_clicks: int = MAX_CLICKS,
) -> dict[str, Any]:
    """Click until IoU ≥ the last target or ``max_clicks``; NoC per target and the IoU curve.

    Every refinement starts from the same ``base`` with all clicks so far, as
    ``POST …/refine`` does.

    Returns:
        ``{"noc85": int, "noc90": int, "ious": [IoU of the base, after click 1, ...]}``.
    """
    positive: list[Point] = []
    negative: list[Point] = []
    current = base == class_id
    ious = [iou(current, truth)]
    while ious[-1] < TARGETS[-1] and len(ious) <= max_clicks:
        click = next_click(current, truth)
        if click is None:
            break
        (positive if click[1] else negative).append(click[0])
        clicks = Clicks(positive=list(positive), negative=list(negative))
        refined = refiner(pixels, base, class_id, clicks, background=background)
        current = refined.mask == class_id
        ious.append(iou(current, truth))
    noc = {}
    for target in TARGETS:
        reached = next((n for n, value in enumerate(ious) if value >= target), None)
        noc[f"noc{round(target * 100)}"] = max_clicks if reached is None else reached
    return {**noc, "ious": [round(v, 4) for v in ious]}


def summarise_noc(records: list[dict[str, Any]], max_clicks: int) -> dict[str, Any]:
    """Means over ``clicks_to_targets`` records: NoC@85/90, failures at 90, base IoU, and
    ``iou_auc``: the mean IoU over clicks 0..``max_clicks`` (a curve that stopped at the
    target keeps its last IoU), which still tells two methods apart when NoC cannot (every
    object already right from the base, or never right within ``max_clicks``)."""
    if not records:
        return {"objects": 0}
    curves = [r["ious"] + [r["ious"][-1]] * (max_clicks + 1 - len(r["ious"])) for r in records]
    return {
        "iou_auc": float(np.mean(curves)),
        "objects": len(records),
        "noc85": float(np.mean([r["noc85"] for r in records])),
        "noc90": float(np.mean([r["noc90"] for r in records])),
        "failures90": int(sum(r["ious"][-1] < TARGETS[-1] for r in records)),
        "base_iou": float(np.mean([r["ious"][0] for r in records])),
        "max_clicks": max_clicks,
    }
