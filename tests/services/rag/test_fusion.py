from __future__ import annotations

import pytest

from services.rag.fusion import reciprocal_rank_fusion


def test_items_ranked_high_by_both_retrievers_win() -> None:
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["b", "a", "d"]], k=60)
    assert [item for item, _ in fused][:2] in (["a", "b"], ["b", "a"])
    assert {item for item, _ in fused} == {"a", "b", "c", "d"}


def test_score_is_the_sum_of_reciprocal_ranks() -> None:
    fused = dict(reciprocal_rank_fusion([["x", "y"], ["y"]], k=60))
    assert fused["x"] == pytest.approx(1 / 61)
    assert fused["y"] == pytest.approx(1 / 62 + 1 / 61)


def test_agreement_further_down_outvotes_a_single_top_hit() -> None:
    fused = reciprocal_rank_fusion([["solo", "shared"], ["other", "shared"]], k=60)
    assert fused[0][0] == "shared"


def test_ties_keep_first_seen_order() -> None:
    fused = reciprocal_rank_fusion([["a"], ["b"]])
    assert [item for item, _ in fused] == ["a", "b"]


def test_no_rankings_fuse_to_nothing() -> None:
    assert reciprocal_rank_fusion([]) == []
