"""The rule that sets the release threshold: from it up an answer reaches the user without review."""

from __future__ import annotations

import random

from eval.rag.tune import Release, Scored, choose_coverage, release_bound, release_threshold


def _unanswerable(scores: list[float]) -> list[Scored]:
    return [Scored(answerable=False, best=s, right=False) for s in scores]


def test_the_release_bound_keeps_new_unanswerable_questions_under_review_where_the_sample_maximum_does_not() -> None:
    draw = random.Random(7)
    sample = _unanswerable([draw.gauss(1.1, 0.2) for _ in range(36)])
    fresh = [draw.gauss(1.1, 0.2) for _ in range(10_000)]
    sample_maximum = max(s.best for s in sample)
    bound = release_bound(sample, coverage=0.95)
    assert sum(f >= sample_maximum for f in fresh) > 100  # about 1 in 37 outscores the best of 36
    assert sum(f >= bound for f in fresh) <= 0.05 * len(fresh)


def test_the_release_threshold_is_above_every_unanswerable_score_seen_and_the_abstention_threshold() -> None:
    # An outlier the normal bound would leave above it.
    scored = [*_unanswerable([1.0] * 30 + [1.1] * 5 + [3.0]), Scored(answerable=True, best=2.0, right=True)]
    assert release_threshold(scored, abstain=1.2, coverage=0.95) > 3.0
    assert release_threshold(_unanswerable([0.5, 0.6, 0.55]), abstain=2.0, coverage=0.95) > 2.0


def test_the_lowest_coverage_that_released_no_held_back_unanswerable_question_is_chosen() -> None:
    releases = [Release(0.9, 2, 0.6), Release(0.95, 0, 0.38), Release(0.99, 0, 0.1)]
    assert choose_coverage(releases).coverage == 0.95
    # None clean: the fewest released.
    assert choose_coverage([Release(0.9, 3, 0.6), Release(0.95, 1, 0.38)]).coverage == 0.95
