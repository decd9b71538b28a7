"""Reciprocal rank fusion (Cormack, Clarke and Büttcher, SIGIR 2009)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TypeVar

K = TypeVar("K", bound=Hashable)

# The constant from the paper; it damps the weight of the very first ranks so that one
# retriever's top hit does not outvote agreement between retrievers further down.
DEFAULT_RRF_K = 60


def reciprocal_rank_fusion(rankings: Sequence[Sequence[K]], *, k: int = DEFAULT_RRF_K) -> list[tuple[K, float]]:
    """Fuse best-first rankings into one: score(d) = sum over rankings of 1 / (k + rank(d)).

    Ranks start at 1. Ties keep the order in which items were first seen, so the result is
    deterministic.
    """
    scores: dict[K, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda pair: pair[1], reverse=True)
