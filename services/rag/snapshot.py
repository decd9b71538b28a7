"""An immutable, searchable view of the knowledge base at one generation.

The knowledge base builds a new snapshot off the event loop after every committed change
and swaps one reference; searches hold whichever snapshot they started with, so ingestion
never blocks or disturbs them. A snapshot can be saved to disk and loaded back on start
when its generation still matches the store.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np
import numpy.typing as npt

from services.rag.bm25_index import Bm25Index, tokenize
from services.rag.dense_index import DenseIndex
from services.rag.errors import InvalidArgument
from services.rag.fusion import reciprocal_rank_fusion
from services.rag.store import ChunkRecord, DocumentRecord

_MANIFEST = "manifest.json"


class Mode(Enum):
    BM25 = "bm25"
    DENSE = "dense"
    HYBRID = "hybrid"


@dataclass(frozen=True, slots=True)
class DenseModel:
    """Which embedding model the dense index holds vectors of; saved indexes must match it."""

    name: str
    dimensions: int


@dataclass(frozen=True, slots=True)
class Hit:
    chunk: ChunkRecord
    document: DocumentRecord
    score: float


@dataclass(frozen=True, slots=True)
class IndexSnapshot:
    generation: int
    chunks: tuple[ChunkRecord, ...]
    documents: Mapping[str, DocumentRecord]
    bm25: Bm25Index
    dense: DenseIndex | None
    dense_model: DenseModel | None
    position_by_key: Mapping[int, int]
    # Chunk keys by position, for turning a filter mask into the keys the dense index knows.
    keys: npt.NDArray[np.uint64]
    # metadata key -> value -> positions of the chunks whose document has that pair.
    postings: Mapping[str, Mapping[str, npt.NDArray[np.intp]]]
    # True when the indexes were loaded from a saved snapshot rather than built.
    restored: bool = False

    def search(
        self,
        query: str,
        *,
        top_k: int,
        metadata_filter: Mapping[str, str],
        mode: Mode,
        query_vector: npt.NDArray[np.float32] | None,
        candidates: int,
    ) -> list[Hit]:
        """The ``top_k`` best chunks; identical chunk texts are returned once (best-ranked copy)."""
        mask = self._filter_mask(metadata_filter)
        if mask is not None and not mask.any():
            return []
        rankings: list[list[tuple[int, float]]] = []
        if mode in (Mode.BM25, Mode.HYBRID):
            rankings.append(self.bm25.search(tokenize([query])[0], candidates, mask))
        if mode in (Mode.DENSE, Mode.HYBRID):
            assert self.dense is not None and query_vector is not None
            allowed = None
            if mask is not None:
                allowed = self.keys[mask]
            by_key = self.dense.search(query_vector, candidates, allowed)
            rankings.append([(self.position_by_key[key], score) for key, score in by_key])
        if mode is Mode.HYBRID:
            ranked = reciprocal_rank_fusion([[position for position, _ in r] for r in rankings])
        else:
            ranked = rankings[0]
        hits: list[Hit] = []
        seen: set[str] = set()
        for position, score in ranked:
            chunk = self.chunks[position]
            if chunk.content_hash in seen:
                continue
            seen.add(chunk.content_hash)
            hits.append(Hit(chunk, self.documents[chunk.document_id], score))
            if len(hits) == top_k:
                break
        return hits

    def _filter_mask(self, metadata_filter: Mapping[str, str]) -> npt.NDArray[np.bool_] | None:
        if not metadata_filter:
            return None
        unknown = sorted(set(metadata_filter) - set(self.postings))
        if unknown:
            known = ", ".join(sorted(self.postings)[:20]) or "none yet"
            raise InvalidArgument(
                [
                    (
                        f"metadata_filter[{field!r}]",
                        f"unknown filter field: no document has this metadata key (known: {known})",
                    )
                    for field in unknown
                ]
            )
        mask = np.ones(len(self.chunks), dtype=np.bool_)
        for field, value in metadata_filter.items():
            selected = np.zeros(len(self.chunks), dtype=np.bool_)
            selected[self.postings[field].get(value, np.empty(0, dtype=np.intp))] = True
            mask &= selected
        return mask

    def save(self, directory: Path) -> None:
        """Write the indexes to ``directory`` atomically (a sibling temp dir, then a rename)."""
        staging = directory.with_name(directory.name + ".staging")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        self.bm25.save(staging / "bm25")
        if self.dense is not None:
            self.dense.save(staging / "dense.usearch")
        manifest = {
            "generation": self.generation,
            "keys": [chunk.key for chunk in self.chunks],
            "dense_model": None if self.dense_model is None else self.dense_model.name,
        }
        (staging / _MANIFEST).write_text(json.dumps(manifest))
        retired = directory.with_name(directory.name + ".retired")
        shutil.rmtree(retired, ignore_errors=True)
        if directory.exists():
            directory.rename(retired)
        staging.rename(directory)
        shutil.rmtree(retired, ignore_errors=True)


def build_snapshot(
    *,
    generation: int,
    documents: Mapping[str, DocumentRecord],
    chunks: Sequence[ChunkRecord],
    previous: IndexSnapshot | None,
    dense_model: DenseModel | None,
    saved: Path | None = None,
) -> IndexSnapshot:
    """Index ``chunks``; loads the indexes from ``saved`` instead when it holds this exact state.

    The dense index is derived from the previous snapshot's graph (copy, remove, add) rather
    than rebuilt, so an ingest costs HNSW insertions for its own chunks only.
    """
    chunks = tuple(chunks)
    loaded = _load_saved(saved, generation, chunks, dense_model) if saved is not None else None
    if loaded is not None:
        bm25, dense = loaded
    else:
        bm25 = Bm25Index.build([chunk.tokens for chunk in chunks])
        dense = None
        if dense_model is not None:
            dense = _derive_dense(chunks, previous, dense_model.dimensions)
    postings: dict[str, dict[str, list[int]]] = {}
    for position, chunk in enumerate(chunks):
        for field, value in documents[chunk.document_id].metadata.items():
            postings.setdefault(field, {}).setdefault(value, []).append(position)
    return IndexSnapshot(
        generation=generation,
        chunks=chunks,
        documents=dict(documents),
        bm25=bm25,
        dense=dense,
        dense_model=dense_model,
        position_by_key={chunk.key: position for position, chunk in enumerate(chunks)},
        keys=np.fromiter((chunk.key for chunk in chunks), dtype=np.uint64, count=len(chunks)),
        postings={
            field: {value: np.asarray(positions, dtype=np.intp) for value, positions in values.items()}
            for field, values in postings.items()
        },
        restored=loaded is not None,
    )


def _derive_dense(chunks: tuple[ChunkRecord, ...], previous: IndexSnapshot | None, dimensions: int) -> DenseIndex:
    base = previous.dense if previous is not None and previous.dense is not None else None
    old_keys = set(previous.position_by_key) if base is not None and previous is not None else set()
    current = {chunk.key for chunk in chunks}
    added = [chunk for chunk in chunks if chunk.key not in old_keys]
    missing = [chunk.key for chunk in added if chunk.vector is None]
    if missing:
        raise ValueError(f"chunks without embeddings cannot enter the dense index: {missing[:5]}")
    vectors = (
        np.stack([chunk.vector for chunk in added if chunk.vector is not None])
        if added
        else np.zeros((0, dimensions), dtype=np.float32)
    )
    return (base or DenseIndex.empty(dimensions)).updated(
        remove=np.fromiter(old_keys - current, dtype=np.uint64),
        add_keys=np.fromiter((chunk.key for chunk in added), dtype=np.uint64),
        add_vectors=vectors,
    )


def _load_saved(
    directory: Path, generation: int, chunks: tuple[ChunkRecord, ...], dense_model: DenseModel | None
) -> tuple[Bm25Index, DenseIndex | None] | None:
    manifest_path = directory / _MANIFEST
    if not manifest_path.exists():
        return None
    manifest = json.loads(manifest_path.read_text())
    if manifest["generation"] != generation or manifest["keys"] != [chunk.key for chunk in chunks]:
        return None
    if dense_model is not None and manifest.get("dense_model") != dense_model.name:
        return None
    bm25 = Bm25Index.load(directory / "bm25", len(chunks))
    dense = None
    if dense_model is not None:
        dense = DenseIndex.load(directory / "dense.usearch", dense_model.dimensions)
    return bm25, dense
