"""Promotion policy: numbers in, decision out. Pure logic shared by service and worker."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PromotionDecision:
    """Whether a candidate model version replaces the serving one, and why."""

    promote: bool
    reason: str


def decide_promotion(
    *,
    candidate_miou: float | None,
    serving_miou: float | None,
    held_out_images: int,
    has_serving_version: bool,
    margin: float = 0.0,
    serving_pinned: bool = False,
) -> PromotionDecision:
    """Gate a candidate on the fixed held-out set.

    Both scores must be measured on the same held-out images. The candidate is
    promoted when there is no serving version, or when its mean IoU is at least
    the serving version's plus ``margin`` (``margin=0``: "not lower"; ties promote,
    since the candidate has seen more corrections).

    Args:
        candidate_miou: held-out mean IoU of the candidate, None if not measured.
        serving_miou: held-out mean IoU of the serving version, None if not measured.
        held_out_images: how many held-out images both were scored on.
        has_serving_version: whether the project has a serving version at all.
        margin: required improvement in mean IoU (may be negative to tolerate noise).
        serving_pinned: the serving version is pinned; nothing is promoted automatically.
    """
    if serving_pinned:
        return PromotionDecision(False, "serving version is pinned; automatic promotion is off")
    if not has_serving_version:
        return PromotionDecision(True, "first model of the project")
    if held_out_images == 0 or candidate_miou is None or serving_miou is None:
        return PromotionDecision(
            False, "no held-out images to compare on; keeping the serving version"
        )
    if candidate_miou >= serving_miou + margin:
        return PromotionDecision(
            True,
            f"held-out mIoU {candidate_miou:.4f} >= serving {serving_miou:.4f} + margin "
            f"{margin:.4f} on {held_out_images} images",
        )
    return PromotionDecision(
        False,
        f"held-out mIoU {candidate_miou:.4f} < serving {serving_miou:.4f} + margin "
        f"{margin:.4f} on {held_out_images} images",
    )
