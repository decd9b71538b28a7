"""Search over a replica's indexes: BM25 (tantivy), dense (usearch) or both fused by rank.

Metadata filters apply inside each retriever, not after it. Text and document records are read
from the lexical index's stored fields for the hits returned only; the database is never asked,
so searches keep being answered while it is away.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

import numpy as np
import numpy.typing as npt

from services.rag.dense_index import DenseIndex
from services.rag.fusion import reciprocal_rank_fusion
from services.rag.lexical_index import LexicalIndex, tokenize
from services.rag.store import ChunkRecord, DocumentRecord


class Mode(Enum):
    BM25 = "bm25"
    DENSE = "dense"
    HYBRID = "hybrid"


@dataclass(frozen=True, slots=True)
class Hit:
    chunk: ChunkRecord
    document: DocumentRecord
    score: float


def search(
    lexical: LexicalIndex,
    dense: DenseIndex | None,
    query: str,
    *,
    top_k: int,
    metadata_filter: Mapping[str, str],
    mode: Mode,
    query_vector: npt.NDArray[np.float32] | None,
    candidates: int,
) -> list[Hit]:
    """The ``top_k`` best chunks; identical chunk texts are returned once (best-ranked copy).

    Runs in a worker thread; everything it reads is one committed state of the lexical index
    (the dense graph may be a change ahead or behind: a key the lexical state lacks is skipped).
    """
    searcher = lexical.searcher()
    within = searcher.filter_query(metadata_filter)
    rankings: list[list[tuple[int, float]]] = []
    if mode in (Mode.BM25, Mode.HYBRID):
        rankings.append(searcher.search(tokenize([query])[0], candidates, within))
    if mode in (Mode.DENSE, Mode.HYBRID):
        assert dense is not None and query_vector is not None
        allowed = None if within is None else np.asarray(searcher.keys(within), dtype=np.uint64)
        rankings.append(dense.search(query_vector, candidates, allowed))
    ranked = reciprocal_rank_fusion([[key for key, _ in r] for r in rankings]) if mode is Mode.HYBRID else rankings[0]
    hits: list[Hit] = []
    seen: set[str] = set()
    # Stored fields are read a page at a time, for as many candidates as the top_k unique hits need.
    page = max(top_k * 2, 10)
    for start in range(0, len(ranked), page):
        window = ranked[start : start + page]
        stored = searcher.read([key for key, _ in window])
        for key, score in window:
            found = stored.get(key)
            if found is None or found.chunk.content_hash in seen:
                continue
            seen.add(found.chunk.content_hash)
            hits.append(Hit(found.chunk, found.document, score))
            if len(hits) == top_k:
                return hits
    return hits
