"""The review draw: random, and never more than one correction away from the share."""

from __future__ import annotations

import random

import pytest

from prelabel.reviewing import draw_for_review, draw_probability


@pytest.mark.parametrize("share", [0.0, 0.1, 0.5, 0.77, 1.0])
def test_the_drawn_count_stays_within_one_of_the_share(share: float) -> None:
    rng = random.Random(7)
    drawn = 0
    for considered in range(500):
        drawn += draw_for_review(share, considered, drawn, rng)
        assert abs(drawn - share * (considered + 1)) < 1


def test_draws_are_random_where_the_share_allows() -> None:
    sequences = {
        tuple(draw_for_review(0.5, n, n // 2, random.Random(seed)) for n in range(0, 40, 2))
        for seed in range(5)
    }
    assert len(sequences) > 1
    assert draw_probability(0.5, 0, 0) == 0.5


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="review_share"):
        draw_probability(1.5, 0, 0)
    with pytest.raises(ValueError, match="drawn"):
        draw_probability(0.5, 1, 2)
