"""Promotion policy: numbers in, decision out. Pure logic shared by service and worker."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


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


class TrainingPolicy(BaseModel):
    """When a project retrains, how, and what a candidate must beat (editable per project).

    The defaults give a small project its first model early and do not spend a
    training run on every single new label afterwards.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    first_model_after: Annotated[int, Field(ge=1)] = 8
    """Corrections needed before the first model is trained."""
    retrain_after: Annotated[int, Field(ge=1)] = 16
    """New corrections since the last run that trigger the next one."""
    retrain_every_minutes: Annotated[float, Field(gt=0)] | None = 60.0
    """Also retrain this often if there is anything new (None: never on time alone)."""
    full_retrain_every: Annotated[int, Field(ge=0)] = 5
    """Every Nth run trains from scratch instead of fine-tuning (0: never)."""
    margin: float = 0.0
    """Required held-out mean-IoU gain for promotion (0: not lower than the serving version)."""
    enabled: bool = True
    """Automatic triggers on or off; manual runs always work."""


@dataclass(frozen=True)
class TriggerDecision:
    """Whether to queue a training run now, of which kind, and why."""

    trigger: bool
    full: bool
    reason: str


def decide_trigger(
    policy: TrainingPolicy,
    *,
    has_model: bool,
    total_corrections: int,
    new_corrections: int,
    minutes_since_last_run: float | None,
    runs_since_full: int | None,
) -> TriggerDecision:
    """Decide whether the project's state calls for a training run.

    Args:
        has_model: a serving version exists.
        total_corrections: current corrections of the project.
        new_corrections: corrections created since the last run started (or was queued).
        minutes_since_last_run: since the last run started (or was queued); None if none.
        runs_since_full: succeeded runs since the last full retrain; None if none ever ran.
    """
    full = not has_model or (
        policy.full_retrain_every > 0
        and runs_since_full is not None
        and runs_since_full + 1 >= policy.full_retrain_every
    )
    if not policy.enabled:
        return TriggerDecision(False, full, "automatic training is disabled")
    if not has_model:
        if minutes_since_last_run is not None and new_corrections == 0:
            return TriggerDecision(False, full, "no new corrections since the last run")
        if total_corrections >= policy.first_model_after:
            return TriggerDecision(
                True,
                full,
                f"{total_corrections} corrections reach the first-model threshold "
                f"{policy.first_model_after}",
            )
        return TriggerDecision(
            False,
            full,
            f"{total_corrections}/{policy.first_model_after} corrections for a first model",
        )
    if new_corrections >= policy.retrain_after:
        return TriggerDecision(
            True, full, f"{new_corrections} new corrections (threshold {policy.retrain_after})"
        )
    if (
        new_corrections > 0
        and policy.retrain_every_minutes is not None
        and (
            minutes_since_last_run is None or minutes_since_last_run >= policy.retrain_every_minutes
        )
    ):
        return TriggerDecision(
            True,
            full,
            f"{new_corrections} new corrections and "
            f"{policy.retrain_every_minutes:g} minutes since the last run",
        )
    return TriggerDecision(False, full, f"{new_corrections}/{policy.retrain_after} new corrections")
