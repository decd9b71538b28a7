"""Dense retrieval: an HNSW vector index (usearch) keyed by chunk key, cosine similarity.

The graph is changed in place, key by key (``apply``), so a change costs HNSW insertions for its
own chunks only, never a copy of the corpus's graph. Calls into one usearch index are
serialised: its per-thread search contexts are shared by concurrent callers
(unum-cloud/USearch#441), and a search takes well under a millisecond.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import numpy.typing as npt
from usearch.index import Index

Vectors = npt.NDArray[np.float32]
Keys = npt.NDArray[np.uint64]

# Below this many allowed keys a filtered search scores them exactly: cheaper than walking
# the graph and exact, where HNSW with a selective filter would need to over-fetch a lot.
_EXACT_FILTER_LIMIT = 4096


class DenseIndex:
    def __init__(self, index: Index) -> None:
        self._index = index
        self.dimensions = int(index.ndim)
        self._lock = threading.Lock()

    @classmethod
    def empty(cls, dimensions: int) -> DenseIndex:
        return cls(Index(ndim=dimensions, metric="cos", dtype="f32"))

    def __len__(self) -> int:
        with self._lock:
            return len(self._index)

    def apply(self, *, remove: Keys, add_keys: Keys, add_vectors: Vectors) -> None:
        """Remove the vectors of ``remove`` (keys not present are ignored) and add ``add_keys``."""
        with self._lock:
            if remove.size:
                self._index.remove(remove)
            if add_keys.size:
                self._index.add(add_keys, add_vectors)

    def search(self, query: Vectors, k: int, allowed: Keys | None = None) -> list[tuple[int, float]]:
        """Up to ``k`` (key, cosine similarity) pairs, best first, only keys in ``allowed`` if given."""
        with self._lock:
            return self._search(query, k, allowed)

    def _search(self, query: Vectors, k: int, allowed: Keys | None) -> list[tuple[int, float]]:
        total = len(self._index)
        if total == 0 or (allowed is not None and allowed.size == 0):
            return []
        if allowed is not None and allowed.size <= _EXACT_FILTER_LIMIT:
            vectors = np.asarray(self._index.get(allowed), dtype=np.float32)
            similarity = vectors @ query
            top = np.argsort(-similarity, kind="stable")[:k]
            return [(int(allowed[i]), float(similarity[i])) for i in top]
        allowed_set = None if allowed is None else set(allowed.tolist())
        count = k if allowed_set is None else min(total, k * 4)
        while True:
            matches = self._index.search(query, count)
            hits = [
                (int(key), 1.0 - float(distance))
                for key, distance in zip(matches.keys, matches.distances, strict=True)
                if allowed_set is None or int(key) in allowed_set
            ]
            if len(hits) >= k or count >= total:
                return hits[:k]
            count = min(total, count * 4)

    def save(self, path: Path) -> None:
        with self._lock:
            self._index.save(str(path))

    @classmethod
    def load(cls, path: Path, dimensions: int) -> DenseIndex:
        index = Index(ndim=dimensions, metric="cos", dtype="f32")
        index.load(str(path))
        return cls(index)
