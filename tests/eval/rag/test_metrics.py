from __future__ import annotations

import pytest

from eval.rag.metrics import answer_is_right, document_ranking, recall_at, reciprocal_rank_at


def test_a_document_is_ranked_at_its_first_chunk() -> None:
    assert document_ranking(["a", "b", "a", "c", "b"]) == ["a", "b", "c"]


def test_recall_is_the_share_of_relevant_documents_in_the_first_k() -> None:
    assert recall_at(2, ["a", "x", "b"], {"a", "b"}) == 0.5
    assert recall_at(3, ["a", "x", "b"], {"a", "b"}) == 1.0


def test_recall_needs_relevant_documents() -> None:
    with pytest.raises(ValueError, match="at least one relevant"):
        recall_at(5, ["a"], set())


def test_reciprocal_rank_counts_the_first_relevant_within_k_only() -> None:
    assert reciprocal_rank_at(10, ["x", "a", "b"], {"a", "b"}) == 0.5
    assert reciprocal_rank_at(1, ["x", "a"], {"a"}) == 0.0
    assert reciprocal_rank_at(10, [], {"a"}) == 0.0


def test_an_answer_is_right_when_it_quotes_an_expected_sentence_and_nothing_off_topic() -> None:
    refund = ("refunds", "Refunds are processed within 5 business days.")
    password = ("security", "Passwords must be at least 12 characters long.")
    expected = ["processed within 5 business days"]
    assert answer_is_right([refund], {"refunds"}, expected)
    assert not answer_is_right([refund, password], {"refunds"}, expected)  # off-topic sentence
    assert not answer_is_right([("refunds", "A refund needs the order number.")], {"refunds"}, expected)
    assert not answer_is_right([], {"refunds"}, expected)  # abstained
