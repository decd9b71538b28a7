"""Lexical retrieval: an immutable BM25 index over tokenized chunks (bm25s)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import bm25s
import numpy as np
import numpy.typing as npt
import Stemmer  # type: ignore[import-not-found]

# bm25s pins its logger to DEBUG on import, which would print a line per index build whatever
# the service's log level; let it inherit the configured level like every other library.
logging.getLogger("bm25s").setLevel(logging.NOTSET)

# A PyStemmer object keeps mutable state (its cache) and is not thread-safe, while tokenizing
# runs in worker threads (ingests and searches at once): one stemmer per thread.
_stemmers = threading.local()


def _stemmer() -> Any:
    stemmer = getattr(_stemmers, "english", None)
    if stemmer is None:
        stemmer = _stemmers.english = Stemmer.Stemmer("english")
    return stemmer


def tokenize(texts: Sequence[str]) -> list[list[str]]:
    """Lowercased, stop-word-free, Snowball-stemmed word tokens, one list per text.

    Single characters count as words (bm25s drops them by default): "step 7" or "option B"
    must be findable.
    """
    tokens = bm25s.tokenize(
        list(texts),
        token_pattern=r"(?u)\b\w+\b",
        stopwords="en",
        stemmer=_stemmer(),
        return_ids=False,
        show_progress=False,
    )
    return [list(doc) for doc in tokens]


class Bm25Index:
    """BM25 scores for a fixed list of token lists; position ``i`` is the i-th list given to ``build``."""

    def __init__(self, retriever: bm25s.BM25 | None, size: int) -> None:
        self._retriever = retriever
        self.size = size

    @classmethod
    def build(cls, corpus_tokens: Sequence[Sequence[str]]) -> Bm25Index:
        if not corpus_tokens:
            return cls(None, 0)
        retriever = bm25s.BM25(method="lucene")
        # An empty document still needs one token for bm25s to give it a row.
        retriever.index([list(doc) or [""] for doc in corpus_tokens], show_progress=False)
        return cls(retriever, len(corpus_tokens))

    def search(
        self, query_tokens: Sequence[str], k: int, mask: npt.NDArray[np.bool_] | None = None
    ) -> list[tuple[int, float]]:
        """Up to ``k`` (position, score) pairs with a positive score, best first, within ``mask``."""
        if self._retriever is None:
            return []
        ids = self._retriever.get_tokens_ids(list(query_tokens))
        if not ids:
            return []
        scores: npt.NDArray[np.float32] = self._retriever.get_scores_from_ids(ids)
        if mask is not None:
            scores = np.where(mask, scores, 0.0)
        candidates = np.flatnonzero(scores > 0)
        if candidates.size > k:
            top = np.argpartition(-scores[candidates], k - 1)[:k]
            candidates = candidates[top]
        order = candidates[np.argsort(-scores[candidates], kind="stable")]
        return [(int(i), float(scores[i])) for i in order]

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        if self._retriever is not None:
            self._retriever.save(str(directory), show_progress=False)

    @classmethod
    def load(cls, directory: Path, size: int) -> Bm25Index:
        if size == 0:
            return cls(None, 0)
        retriever = bm25s.BM25.load(str(directory), show_progress=False, verbosity=0)
        return cls(retriever, size)
