"""Ranking metrics at document level, as used by the retrieval evaluation."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass


def document_ranking(document_ids: Iterable[str]) -> list[str]:
    """Documents in the order their first chunk was retrieved (later chunks of a document add nothing)."""
    return list(dict.fromkeys(document_ids))


def recall_at(k: int, ranking: Sequence[str], relevant: Collection[str]) -> float:
    """Share of the relevant documents found in the first ``k`` of ``ranking``."""
    if not relevant:
        raise ValueError("a question needs at least one relevant document")
    return len(set(ranking[:k]) & set(relevant)) / len(set(relevant))


def reciprocal_rank_at(k: int, ranking: Sequence[str], relevant: Collection[str]) -> float:
    """1 / rank of the first relevant document within the first ``k``, else 0."""
    for rank, document_id in enumerate(ranking[:k], start=1):
        if document_id in relevant:
            return 1.0 / rank
    return 0.0


def answer_is_right(quoted: Iterable[tuple[str, str]], relevant: Collection[str], expected: Iterable[str]) -> bool:
    """An answer quoting ``(document_id, sentence)`` pairs is right when one sentence contains an
    expected one and every sentence comes from a relevant document (nothing off-topic)."""
    quoted = list(quoted)
    on_topic = bool(quoted) and all(document_id in relevant for document_id, _ in quoted)
    return on_topic and any(answer in sentence for _, sentence in quoted for answer in expected)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the decision engine did with one question."""

    style: str
    answerable: bool  # the corpus answers it
    right: bool  # quoted an expected sentence and nothing off-topic
    abstained: bool  # said the knowledge base does not cover it (no citations)
    released: bool  # answered with enough confidence to reach the user without review

    @property
    def answered_but_wrong(self) -> bool:
        return self.answerable and not self.abstained and not self.right
