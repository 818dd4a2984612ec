"""Promotion gate and training trigger: pure decisions from numbers, and policy validation."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from prelabel.policy import (
    MAX_TOLERANCE,
    PairedEvidence,
    PromotionDecision,
    TrainingPolicy,
    TriggerDecision,
    decide_promotion,
    decide_trigger,
    pair_scores,
    sign_test,
)

# --- decide_promotion -------------------------------------------------------


def paired(candidate: list[float], serving: list[float], margin: float = 0.0) -> PairedEvidence:
    ids = [f"img{i}" for i in range(len(candidate))]
    return pair_scores(
        dict(zip(ids, candidate, strict=True)), dict(zip(ids, serving, strict=True)), margin=margin
    )


def gate(
    candidate: list[float], serving: list[float], margin: float = 0.0, **kwargs: Any
) -> PromotionDecision:
    return decide_promotion(
        evidence=paired(candidate, serving, margin),
        has_serving_version=True,
        margin=margin,
        **kwargs,
    )


def test_first_model_is_promoted_without_any_held_out_score() -> None:
    decision = decide_promotion(evidence=None, has_serving_version=False)

    assert decision.promote
    assert "first model" in decision.reason


def test_tie_with_the_serving_version_promotes_at_zero_margin() -> None:
    decision = gate([0.5, 0.6, 0.7, 0.8], [0.5, 0.6, 0.7, 0.8])

    assert decision.promote
    assert "4 held-out images" in decision.reason
    assert "0 wins / 0 losses / 4 ties" in decision.reason


def test_one_lucky_image_does_not_decide() -> None:
    # the candidate's mean is higher only because of one image; it loses on the others
    decision = gate([0.99, 0.50, 0.50], [0.10, 0.55, 0.55])

    assert decision.evidence is not None and decision.evidence.mean_difference > 0
    assert not decision.promote
    assert "worse on most images" in decision.reason


def test_one_unlucky_image_within_the_noise_does_not_reject() -> None:
    # better on 3 of 4 images; one image costs the mean a little, within one standard error
    decision = gate([0.62, 0.61, 0.63, 0.52], [0.60, 0.60, 0.60, 0.60])

    assert decision.evidence is not None
    assert decision.evidence.mean_difference < 0
    assert decision.evidence.mean_difference > -decision.evidence.tolerance
    assert decision.promote


def test_a_clearly_worse_candidate_never_serves_even_when_it_wins_on_half() -> None:
    decision = gate([0.61, 0.61, 0.30, 0.30], [0.60, 0.60, 0.60, 0.60])

    assert not decision.promote
    assert "worse beyond noise" in decision.reason


def test_noise_tolerance_is_capped() -> None:
    evidence = paired([0.9, 0.1, 0.9, 0.1], [0.1, 0.9, 0.1, 0.9])

    assert evidence.tolerance == MAX_TOLERANCE


def test_a_single_image_must_not_lose() -> None:
    assert not gate([0.49], [0.50]).promote
    assert gate([0.50], [0.50]).promote


def test_evidence_is_recorded_per_image() -> None:
    decision = gate([0.7, 0.8], [0.6, 0.9])

    assert decision.evidence is not None
    stored = decision.evidence.to_dict()
    assert stored["per_image"] == {
        "img0": {"candidate": 0.7, "serving": 0.6},
        "img1": {"candidate": 0.8, "serving": 0.9},
    }
    assert stored["wins"] == 1 and stored["losses"] == 1


def test_sign_test_p_values() -> None:
    assert sign_test(0, 0) == 1.0
    assert sign_test(5, 0) == pytest.approx(2 / 32)
    assert sign_test(3, 3) == 1.0


@pytest.mark.parametrize(
    ("candidate", "margin", "promote"),
    [
        (0.52, 0.05, False),  # better, but not by the required margin
        (0.56, 0.05, True),
        (0.495, -0.01, True),  # a negative margin tolerates a small drop
        (0.47, -0.01, False),  # ... but not a larger one
    ],
)
def test_margin_shifts_the_bar(candidate: float, margin: float, promote: bool) -> None:
    # identical differences on every image: no spread, no noise tolerance
    decision = gate([candidate] * 5, [0.5] * 5, margin=margin)

    assert decision.promote is promote
    assert f"margin {margin:+.4f}" in decision.reason


def test_without_held_out_images_the_serving_version_stays() -> None:
    for evidence in (None, paired([], [])):
        decision = decide_promotion(evidence=evidence, has_serving_version=True)
        assert not decision.promote
        assert "held-out" in decision.reason
    assert not gate([0.9, 0.9], [0.1, 0.1], min_images=3).promote


@pytest.mark.parametrize("has_serving_version", [True, False])
def test_pinned_serving_version_blocks_promotion_whatever_the_numbers(
    has_serving_version: bool,
) -> None:
    decision = decide_promotion(
        evidence=paired([0.99] * 10, [0.01] * 10),
        has_serving_version=has_serving_version,
        margin=-1.0,
        serving_pinned=True,
    )

    assert not decision.promote
    assert "pinned" in decision.reason


# --- decide_trigger ---------------------------------------------------------

POLICY = TrainingPolicy(
    first_model_after=3, retrain_after=2, retrain_every_minutes=30, full_retrain_every=5
)


def _trigger(
    policy: TrainingPolicy = POLICY,
    *,
    has_model: bool,
    total: int,
    new: int,
    minutes: float | None = None,
    runs_since_full: int | None = None,
) -> TriggerDecision:
    return decide_trigger(
        policy,
        has_model=has_model,
        total_corrections=total,
        new_corrections=new,
        minutes_since_last_run=minutes,
        runs_since_full=runs_since_full,
    )


def test_no_first_model_below_the_threshold() -> None:
    decision = _trigger(has_model=False, total=2, new=2)

    assert not decision.trigger
    assert "2/3" in decision.reason


def test_first_model_at_the_threshold_is_a_full_run() -> None:
    decision = _trigger(has_model=False, total=3, new=3)

    assert decision.trigger
    assert decision.full


def test_no_retrigger_without_a_model_when_nothing_is_new_since_the_last_run() -> None:
    # The first run failed (or is still going): the same corrections must not queue it again.
    unchanged = _trigger(has_model=False, total=5, new=0, minutes=500.0)
    one_more = _trigger(has_model=False, total=6, new=1, minutes=500.0)

    assert not unchanged.trigger
    assert "no new corrections" in unchanged.reason
    assert one_more.trigger
    assert one_more.full


@pytest.mark.parametrize(("new", "trigger"), [(0, False), (1, False), (2, True), (7, True)])
def test_after_a_model_the_count_of_new_corrections_triggers(new: int, trigger: bool) -> None:
    decision = _trigger(has_model=True, total=20, new=new, minutes=1.0, runs_since_full=0)

    assert decision.trigger is trigger
    assert not decision.full


@pytest.mark.parametrize(
    ("new", "minutes", "trigger"),
    [
        (1, 29.9, False),
        (1, 30.0, True),
        (1, 600.0, True),
        (0, 600.0, False),  # time alone never retrains: something must be new
    ],
)
def test_time_based_trigger(new: int, minutes: float, trigger: bool) -> None:
    decision = _trigger(has_model=True, total=20, new=new, minutes=minutes, runs_since_full=1)

    assert decision.trigger is trigger
    assert not decision.full


def test_time_based_trigger_is_off_without_retrain_every_minutes() -> None:
    policy = POLICY.model_copy(update={"retrain_every_minutes": None})

    decision = _trigger(policy, has_model=True, total=20, new=1, minutes=1e6, runs_since_full=1)

    assert not decision.trigger


def test_every_nth_run_is_full() -> None:
    # Replays what triggers.py feeds in: runs_since_full counts succeeded runs since the last full.
    policy = POLICY.model_copy(update={"full_retrain_every": 3})
    has_model, runs_since_full, kinds = False, None, []
    for _ in range(7):
        decision = _trigger(
            policy,
            has_model=has_model,
            total=100,
            new=10,
            minutes=1.0 if has_model else None,
            runs_since_full=runs_since_full,
        )
        assert decision.trigger
        kinds.append("full" if decision.full else "incremental")
        has_model = True
        runs_since_full = 0 if decision.full else (runs_since_full or 0) + 1

    assert kinds == ["full", "incremental", "incremental"] * 2 + ["full"]


@pytest.mark.parametrize("runs_since_full", [None, 0, 4, 100])
def test_full_retrain_every_zero_never_forces_a_full_run(runs_since_full: int | None) -> None:
    policy = POLICY.model_copy(update={"full_retrain_every": 0})

    decision = _trigger(
        policy, has_model=True, total=20, new=5, minutes=1.0, runs_since_full=runs_since_full
    )

    assert decision.trigger
    assert not decision.full


@pytest.mark.parametrize("has_model", [True, False])
def test_disabled_policy_never_triggers(has_model: bool) -> None:
    policy = POLICY.model_copy(update={"enabled": False})

    decision = _trigger(
        policy, has_model=has_model, total=100, new=100, minutes=1e6, runs_since_full=0
    )

    assert not decision.trigger
    assert "disabled" in decision.reason


# --- TrainingPolicy ---------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"first_model_after": 0},
        {"retrain_after": 0},
        {"retrain_after": -3},
        {"retrain_every_minutes": 0},
        {"retrain_every_minutes": -1.5},
        {"full_retrain_every": -1},
        {"retrain_after": "many"},
        {"unknown_option": True},
    ],
)
def test_training_policy_rejects_bad_values(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        TrainingPolicy.model_validate(bad)


def test_training_policy_accepts_the_documented_special_values() -> None:
    policy = TrainingPolicy.model_validate({"retrain_every_minutes": None, "full_retrain_every": 0})

    assert policy.retrain_every_minutes is None
    assert policy.full_retrain_every == 0


def test_training_policy_is_frozen() -> None:
    with pytest.raises(ValidationError):
        POLICY.retrain_after = 1  # type: ignore[misc]
