"""Promotion policy: numbers in, decision out. Pure logic shared by service and worker."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from prelabel.errors import ValidationFailed

SE_TOLERANCE = 1.0
"""How many standard errors of the paired mean difference count as noise."""
MAX_TOLERANCE = 0.02
"""Noise never excuses more than this mean-IoU shortfall, however few the images."""


@dataclass(frozen=True)
class PairedEvidence:
    """Candidate against serving version, image by image, on the same held-out images.

    Differences are candidate minus serving per-image mean IoU; wins and losses
    count them against the project's margin. ``tolerance`` is
    ``SE_TOLERANCE`` standard errors of their mean (0 with fewer than two images),
    capped at ``MAX_TOLERANCE``.
    """

    image_ids: tuple[str, ...]
    candidate: tuple[float, ...]
    serving: tuple[float, ...]
    mean_difference: float
    standard_error: float | None
    tolerance: float
    wins: int
    losses: int
    ties: int
    sign_test_p: float
    """Two-sided exact sign test of wins against losses (ties dropped)."""

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form, stored with the decision."""
        return {
            "per_image": {
                image: {"candidate": c, "serving": s}
                for image, c, s in zip(self.image_ids, self.candidate, self.serving, strict=True)
            },
            "mean_difference": self.mean_difference,
            "standard_error": self.standard_error,
            "tolerance": self.tolerance,
            "wins": self.wins,
            "losses": self.losses,
            "ties": self.ties,
            "sign_test_p": self.sign_test_p,
        }


def pair_scores(
    candidate: Mapping[str, float],
    serving: Mapping[str, float],
    *,
    margin: float = 0.0,
    tie: float = 1e-4,
) -> PairedEvidence:
    """Pair per-image scores by image id (images scored by both only).

    A win is a difference above ``margin`` by more than ``tie``, a loss one below
    it by more than ``tie``; the rest are ties.
    """
    images = tuple(sorted(set(candidate) & set(serving)))
    c = tuple(float(candidate[i]) for i in images)
    s = tuple(float(serving[i]) for i in images)
    diffs = [a - b for a, b in zip(c, s, strict=True)]
    n = len(diffs)
    mean = sum(diffs) / n if n else 0.0
    se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1) / n) if n >= 2 else None
    wins = sum(d - margin > tie for d in diffs)
    losses = sum(d - margin < -tie for d in diffs)
    return PairedEvidence(
        image_ids=images,
        candidate=c,
        serving=s,
        mean_difference=mean,
        standard_error=se,
        tolerance=min(SE_TOLERANCE * se, MAX_TOLERANCE) if se is not None else 0.0,
        wins=wins,
        losses=losses,
        ties=n - wins - losses,
        sign_test_p=sign_test(wins, losses),
    )


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact binomial sign test p-value (1.0 without decided pairs)."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return float(min(1.0, 2 * tail))


@dataclass(frozen=True)
class PromotionDecision:
    """Whether a candidate model version replaces the serving one, why, and on what evidence."""

    promote: bool
    reason: str
    evidence: PairedEvidence | None = None


def decide_promotion(
    *,
    evidence: PairedEvidence | None,
    has_serving_version: bool,
    margin: float = 0.0,
    serving_pinned: bool = False,
    min_images: int = 1,
) -> PromotionDecision:
    """Gate a candidate with a paired per-image comparison on the fixed held-out set.

    A candidate is *worse* when it loses on more held-out images than it wins, or
    when its mean per-image IoU is below the serving version's (plus ``margin``) by
    more than the noise tolerance (one standard error of the paired differences,
    at most ``MAX_TOLERANCE``). A worse candidate never serves. Otherwise it is
    promoted: it has seen more corrections, and with few held-out images one lucky
    or unlucky image must not decide alone (the sign rule needs a majority; the
    tolerance scales with the spread). With fewer than two images the tolerance is
    zero and the candidate must not lose on its image.

    Args:
        evidence: per-image scores of both versions (None or empty: not measured).
        has_serving_version: whether the project has a serving version at all.
        margin: required mean-IoU gain (per project; may be negative); the evidence
            must have been paired with the same margin.
        serving_pinned: the serving version is pinned; nothing is promoted automatically.
        min_images: fewer paired held-out images than this and nothing replaces
            the serving version.
    """
    if serving_pinned:
        return PromotionDecision(
            False, "serving version is pinned; automatic promotion is off", evidence
        )
    if not has_serving_version:
        return PromotionDecision(True, "first model of the project", evidence)
    n = len(evidence.image_ids) if evidence else 0
    if evidence is None or n == 0 or n < min_images:
        return PromotionDecision(
            False,
            f"{n} paired held-out image(s), {min_images} needed; keeping the serving version",
            evidence,
        )
    floor = margin - evidence.tolerance
    summary = (
        f"on {n} held-out images: mean IoU difference {evidence.mean_difference:+.4f} "
        f"(tolerance {evidence.tolerance:.4f}, margin {margin:+.4f}), "
        f"{evidence.wins} wins / {evidence.losses} losses / {evidence.ties} ties "
        f"(sign test p={evidence.sign_test_p:.3f})"
    )
    if evidence.losses > evidence.wins:
        return PromotionDecision(False, f"worse on most images {summary}", evidence)
    if evidence.mean_difference < floor:
        return PromotionDecision(False, f"worse beyond noise {summary}", evidence)
    return PromotionDecision(True, f"not worse {summary}", evidence)


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


def check_finite(policy: TrainingPolicy) -> None:
    """Refuse a policy whose numbers are not finite before it is stored: JSON has no NaN or
    infinity (PostgreSQL refuses them, the API shows them as null). Not a rule of the model
    itself, so that a policy stored before this check still reads back.

    Raises:
        ValidationFailed: Naming the field.
    """
    for field in ("retrain_every_minutes", "margin"):
        value = getattr(policy, field)
        if value is not None and not math.isfinite(value):
            raise ValidationFailed(f"training policy {field} must be a finite number, got {value}")


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
