"""Independent quality review: a project's review settings, a correction's review state,
and the draw that decides which corrections a reviewer must see.

:mod:`prelabel.corrections` applies these rules when a correction is recorded,
:mod:`prelabel.reviews` when a reviewer decides; :func:`trainable_clause` is the
one definition of the corrections that train and count, used by training, the
trigger policy, acceptance metrics and exports.
"""

from __future__ import annotations

import random
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool
from sqlalchemy import ColumnElement, and_

from prelabel.tables import CorrectionRow

MAX_REVIEWERS = 10
"""The largest ``min_reviewers`` a project may ask for."""


class ReviewStatus(StrEnum):
    """Where a correction stands in the review workflow."""

    NOT_REQUIRED = "not_required"
    """Recorded while the project did not require review."""
    PENDING = "pending"
    """Waiting for reviewers; it neither trains nor counts in acceptance metrics."""
    APPROVED = "approved"
    REJECTED = "rejected"
    """Sent back to its annotator, who resubmits."""


class ReviewReason(StrEnum):
    """Why a correction got its first review status (kept with it)."""

    DRAWN = "drawn"
    """Drawn for review (pending)."""
    NOT_DRAWN = "not_drawn"
    """Not drawn for review: approved at once."""
    RESUBMISSION = "resubmission"
    """Replaces a rejected correction: always reviewed."""
    REPLACES_PENDING = "replaces_pending"
    """Replaces a correction still waiting for review: it waits in its place (no redraw)."""
    REVIEWER_EDIT = "reviewer_edit"
    """A reviewer's edited mask; carries that reviewer's approval."""


class ReviewDecision(StrEnum):
    APPROVE = "approve"
    REJECT = "reject"


class ReviewSettings(BaseModel):
    """A project's review settings (``GET/PATCH /projects/{project}``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    review_required: bool = False
    review_share: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    """The share of new corrections drawn at random for review when review is required."""
    min_reviewers: Annotated[int, Field(ge=1, le=MAX_REVIEWERS)] = 1
    """Distinct reviewers who must approve a correction before it counts."""


class ReviewSettingsChange(BaseModel):
    """The body of ``PATCH /projects/{project}``: the settings to change, others kept."""

    model_config = ConfigDict(extra="forbid")

    review_required: StrictBool | None = None
    """JSON true or false only: turning review off lets unreviewed corrections count, and
    lax parsing would read ``"no"`` or ``0`` as off."""
    review_share: Annotated[float | None, Field(ge=0.0, le=1.0)] = None
    min_reviewers: Annotated[int | None, Field(ge=1, le=MAX_REVIEWERS)] = None

    def applied_to(self, settings: ReviewSettings) -> ReviewSettings:
        """``settings`` with the fields this change sets replaced."""
        return settings.model_copy(update=self.model_dump(exclude_none=True))


def draw_probability(share: float, considered: int, drawn: int) -> float:
    """The chance that the next correction is drawn, given the project's draws so far.

    Each draw is random, but steered so that after ``n`` draws the number drawn is
    always within one of ``share * n`` (randomised rounding of the running
    total): annotators cannot predict which corrections are reviewed, and the
    reviewed share never drifts from the setting, even on a small project.

    Args:
        share: The project's ``review_share``, in [0, 1].
        considered: Corrections that went through the draw so far.
        drawn: How many of them were drawn.

    Raises:
        ValueError: ``share`` outside [0, 1] or counts that do not fit.
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"review_share must be in [0, 1], got {share}")
    if not 0 <= drawn <= considered:
        raise ValueError(f"drawn ({drawn}) must be within 0..considered ({considered})")
    due = share * (considered + 1) - drawn
    return min(max(due, 0.0), 1.0)


def draw_for_review(share: float, considered: int, drawn: int, rng: random.Random) -> bool:
    """Whether the next correction is drawn for review (see :func:`draw_probability`)."""
    probability = draw_probability(share, considered, drawn)
    return probability >= 1.0 or rng.random() < probability


def trainable_clause(project_id: str, *, review_required: bool) -> ColumnElement[bool]:
    """The project's corrections that train and count in acceptance metrics.

    The current correction of each image; when the project requires review, only
    if it is approved (pending ones wait, rejected ones go back to their annotator).
    """
    current = and_(CorrectionRow.project_id == project_id, CorrectionRow.is_current.is_(True))
    if not review_required:
        return current
    return and_(current, CorrectionRow.review_status == ReviewStatus.APPROVED)
