"""Lexical retrieval: a BM25 index on disk (tantivy), changed document by document.

tantivy keeps the index as immutable segments merged in the background: adding or removing a
document writes a small new segment at the next commit, so the cost of a change does not grow
with the corpus, and segments are memory-mapped, so the corpus lives on disk (and in the page
cache), not in Python objects. One row per chunk holds its BM25 terms, the metadata terms
filters use, and the stored fields a hit is answered with (its text and its document's record).

Terms are the project's own tokens (``tokenize``: Snowball stemming, English stop words, single
characters kept), handed to tantivy as whitespace-separated words. tantivy's own BM25 (k1 = 1.2,
document lengths rounded to one byte) picks the candidates; the best of them are then scored
exactly (k1 = 1.5, exact lengths, Lucene's idf: bm25s's "lucene" BM25, which the evaluation's
figures were set with) from their stored terms, so a replica's ranking does not depend on how
its index happens to be segmented and stays within the evaluated quality.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bm25s
import Stemmer  # type: ignore[import-not-found]
import tantivy

from services.rag.errors import InvalidArgument
from services.rag.store import ChunkRecord, DocumentRecord

# A PyStemmer object keeps mutable state (its cache) and is not thread-safe, while tokenizing
# runs in worker threads (ingests and searches at once): one stemmer per thread.
_stemmers = threading.local()
# Between a metadata key and its value in a filter term: a control character no key contains.
_PAIR = "\x1f"
# The writer's memory budget: it flushes a segment when full (a commit flushes regardless).
_WRITER_HEAP_BYTES = 32_000_000
# BM25 parameters of the exact scoring (bm25s's defaults, with which the evaluation was set).
_K1 = 1.5
_B = 0.75
# tantivy candidates rescored exactly beyond the ones asked for: its ranking differs from the
# exact one only among near-ties, so a margin keeps the exact top ``k`` within the pool.
_RESCORE_MARGIN = 50


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
    if not texts:
        return []
    tokens = bm25s.tokenize(
        list(texts),
        token_pattern=r"(?u)\b\w+\b",
        stopwords="en",
        stemmer=_stemmer(),
        return_ids=False,
        show_progress=False,
    )
    return [list(doc) for doc in tokens]


def _schema() -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    builder.add_unsigned_field("key", stored=True, indexed=True, fast=True)
    builder.add_text_field("document_id", tokenizer_name="raw", index_option="basic")
    # Stored too: the exact scoring reads the terms of the candidates it rescores.
    builder.add_text_field("terms", stored=True, tokenizer_name="whitespace", index_option="freq")
    builder.add_unsigned_field("length", fast=True)
    builder.add_text_field("metadata", tokenizer_name="raw", index_option="basic")
    builder.add_text_field("metadata_key", tokenizer_name="raw", index_option="basic")
    # Everything a hit is answered with, read only for the hits a search returns.
    builder.add_bytes_field("hit", stored=True)
    return builder.build()


@dataclass(frozen=True, slots=True)
class IndexedChunk:
    """A chunk as a search returns it: read from the index's stored fields."""

    chunk: ChunkRecord
    document: DocumentRecord


class LexicalIndex:
    """One tantivy index in ``directory``; a single writer (this object), any number of readers.

    ``replace`` and ``remove`` stage changes; ``commit`` makes them durable and visible to the
    searchers taken after it. Searches may run in any thread while a commit is under way.
    """

    def __init__(self, index: tantivy.Index, directory: Path | None) -> None:
        self._index = index
        self._schema = index.schema
        self._writer = index.writer(heap_size=_WRITER_HEAP_BYTES, num_threads=1)
        self.directory = directory
        self._closed = False
        self._average_length = self._measure_average_length()

    @classmethod
    def open(cls, directory: Path) -> LexicalIndex:
        """The index saved in ``directory``; raises (OSError, ValueError) if it is missing or unreadable."""
        if not tantivy.Index.exists(str(directory)):
            raise FileNotFoundError(f"no index in {directory}")
        # The schema is the one this build writes: the manifest's format number changes with it.
        return cls(tantivy.Index.open(str(directory)), directory)

    @classmethod
    def create(cls, directory: Path) -> LexicalIndex:
        """A new, empty index in ``directory`` (whatever was there is removed by the caller)."""
        directory.mkdir(parents=True, exist_ok=True)
        return cls(tantivy.Index(_schema(), path=str(directory), reuse=False), directory)

    def close(self) -> None:
        # Merges under way finish before the directory is let go (and its lock released).
        if not self._closed:
            self._closed = True
            self._writer.wait_merging_threads()

    # --- writes -------------------------------------------------------------------------

    def remove(self, document_id: str) -> None:
        self._writer.delete_documents_by_term("document_id", document_id)

    def clear(self) -> None:
        self._writer.delete_all_documents()

    def add(self, document: DocumentRecord, chunks: Sequence[ChunkRecord]) -> None:
        """Stage ``document``'s chunks (each with its tokens and text); ``remove`` it first to replace it."""
        record = _record_json(document)
        pairs = [f"{key}{_PAIR}{value}" for key, value in document.metadata.items()]
        for chunk in chunks:
            row = tantivy.Document()
            row.add_unsigned("key", chunk.key)
            row.add_text("document_id", document.document_id)
            row.add_text("terms", " ".join(chunk.tokens))
            row.add_unsigned("length", len(chunk.tokens))
            for pair in pairs:
                row.add_text("metadata", pair)
            for key in document.metadata:
                row.add_text("metadata_key", key)
            row.add_bytes("hit", _hit_bytes(chunk, record))
            self._writer.add_document(row)

    def commit(self) -> None:
        """Make the staged changes durable and visible to searches that start after this returns."""
        self._writer.commit()
        self._index.reload()
        self._average_length = self._measure_average_length()

    def _measure_average_length(self) -> float:
        """The mean number of terms per live chunk (BM25's avgdl), once per commit."""
        searcher = self._index.searcher()
        if not searcher.num_docs:
            return 1.0
        result = searcher.aggregate(tantivy.Query.all_query(), {"length": {"avg": {"field": "length"}}})
        return float(result["length"]["value"] or 1.0)

    # --- reads --------------------------------------------------------------------------

    def searcher(self) -> Searcher:
        """A point-in-time view (the last commit), for one search."""
        return Searcher(self._index.searcher(), self._schema, self._average_length)

    def keys_of(self, document_ids: Sequence[str]) -> list[int]:
        """The chunk keys committed for these documents."""
        query = tantivy.Query.term_set_query(self._schema, "document_id", list(document_ids))
        return _keys(self._index.searcher(), query)

    def __len__(self) -> int:
        return int(self._index.searcher().num_docs)

    def chunks(self) -> Iterator[IndexedChunk]:
        """Every chunk, in key order (for tests and tools: it reads the whole index)."""
        searcher = self._index.searcher()
        total = searcher.num_docs
        if not total:
            return iter(())
        hits = searcher.search(tantivy.Query.all_query(), limit=total, count=False).hits
        found = [_indexed(searcher.doc(address)) for _, address in hits]
        return iter(sorted(found, key=lambda c: c.chunk.key))


class Searcher:
    """Searches over one committed state of the index."""

    def __init__(self, searcher: tantivy.Searcher, schema: tantivy.Schema, average_length: float) -> None:
        self._searcher = searcher
        self._schema = schema
        self._average_length = average_length
        # Where the chunks this searcher has scored are, so reading their hits needs no lookup.
        self._addresses: dict[int, tantivy.DocAddress] = {}

    def filter_query(self, metadata_filter: Mapping[str, str]) -> tantivy.Query | None:
        """The query that keeps chunks whose document has every pair; InvalidArgument naming unknown keys."""
        if not metadata_filter:
            return None
        unknown = sorted(key for key in metadata_filter if not self._count(self._term("metadata_key", key)))
        if unknown:
            known = ", ".join(self.metadata_keys()[:20]) or "none yet"
            raise InvalidArgument(
                [
                    (
                        f"metadata_filter[{key!r}]",
                        f"unknown filter field: no document has this metadata key (known: {known})",
                    )
                    for key in unknown
                ]
            )
        return tantivy.Query.boolean_query(
            [
                (tantivy.Occur.Must, self._term("metadata", f"{key}{_PAIR}{value}"))
                for key, value in metadata_filter.items()
            ]
        )

    def metadata_keys(self) -> list[str]:
        """Metadata keys some live document has (the term dictionary also remembers deleted ones)."""
        terms = self._searcher.terms_with_prefix("metadata_key", "")
        return sorted(str(k) for k, _ in terms if self._count(self._term("metadata_key", str(k))))

    def search(self, tokens: Sequence[str], k: int, within: tantivy.Query | None) -> list[tuple[int, float]]:
        """Up to ``k`` (chunk key, BM25 score) pairs with a positive score, best first, within ``within``."""
        if not tokens:
            return []
        # One clause per occurrence: a word repeated in the query counts that many times.
        scored: list[tuple[tantivy.Occur, tantivy.Query]] = [
            (tantivy.Occur.Should, self._term("terms", token)) for token in tokens
        ]
        if within is not None:
            scored.append((tantivy.Occur.Must, tantivy.Query.const_score_query(within, 0.0)))
        pool = self._searcher.search(tantivy.Query.boolean_query(scored), limit=k + _RESCORE_MARGIN, count=False).hits
        pool = [(score, address) for score, address in pool if score > 0]
        if not pool:
            return []
        total = self._searcher.num_docs
        # Document frequencies among live chunks: the term dictionary's counts include deleted
        # chunks until their segment is merged.
        idf = {
            token: math.log(1 + (total - df + 0.5) / (df + 0.5))
            for token in set(tokens)
            if (df := self._count(self._term("terms", token)))
        }
        addresses = [address for _, address in pool]
        keys = self._searcher.fast_field_values("key", addresses)
        lengths = self._searcher.fast_field_values("length", addresses)
        ranked: list[tuple[int, float]] = []
        for address, key, length in zip(addresses, keys, lengths, strict=True):
            # Term frequencies counted in C (str.count) on the stored terms, two spaces between
            # terms so that adjacent occurrences do not share one.
            terms = " " + str(self._searcher.doc(address).get_first("terms") or "").replace(" ", "  ") + " "
            norm = _K1 * (1 - _B + _B * max(_int(length), 1) / self._average_length)
            score = 0.0
            for token in tokens:
                if (weight := idf.get(token)) and (tf := terms.count(f" {token} ")):
                    score += weight * tf / (tf + norm)
            if score > 0:
                ranked.append((_int(key), score))
                self._addresses[_int(key)] = address
        # Best first; equal scores in key order (the order chunks were added in).
        ranked.sort(key=lambda pair: (-pair[1], pair[0]))
        return ranked[:k]

    def keys(self, within: tantivy.Query) -> list[int]:
        """The keys of every chunk ``within`` matches (for filtering the dense index)."""
        return _keys(self._searcher, within)

    def read(self, keys: Sequence[int]) -> dict[int, IndexedChunk]:
        """The stored chunk (text, offsets, document) of each key still in the index."""
        addresses = [self._addresses[key] for key in keys if key in self._addresses]
        unseen = [key for key in keys if key not in self._addresses]
        if unseen:  # found by the dense index only
            query = tantivy.Query.term_set_query(self._schema, "key", unseen)
            addresses += [address for _, address in self._searcher.search(query, limit=len(unseen), count=False).hits]
        found = (_indexed(self._searcher.doc(address)) for address in addresses)
        return {c.chunk.key: c for c in found}

    def _term(self, field: str, value: str) -> tantivy.Query:
        return tantivy.Query.term_query(self._schema, field, value, index_option="basic")

    def _count(self, query: tantivy.Query) -> int:
        return _count(self._searcher, query)


def _count(searcher: tantivy.Searcher, query: tantivy.Query) -> int:
    # The type stubs of tantivy-py 0.27 leave out SearchResult.count, which the binding has.
    return int(searcher.search(query, limit=1, count=True).count or 0)  # type: ignore[attr-defined]


def _keys(searcher: tantivy.Searcher, query: tantivy.Query) -> list[int]:
    """The chunk key of every live document ``query`` matches (read from the fast field, not the store)."""
    total = _count(searcher, query)
    if not total:
        return []
    hits = searcher.search(query, limit=total, count=False).hits
    return [_int(k) for k in searcher.fast_field_values("key", [address for _, address in hits])]


def _int(value: object) -> int:
    if not isinstance(value, int):
        raise ValueError(f"a chunk key must be an integer, found {value!r}")
    return value


def _record_json(document: DocumentRecord) -> dict[str, Any]:
    return {
        "document_id": document.document_id,
        "content_type": document.content_type,
        "metadata": dict(document.metadata),
        "content_hash": document.content_hash,
        "update_time": document.update_time,
        "chunk_count": document.chunk_count,
    }


def _hit_bytes(chunk: ChunkRecord, record: dict[str, Any]) -> bytes:
    stored = {
        "ordinal": chunk.ordinal,
        "start": chunk.start,
        "end": chunk.end,
        "heading": chunk.heading,
        "text": chunk.text,
        "content_hash": chunk.content_hash,
        "document": record,
    }
    return json.dumps(stored, separators=(",", ":")).encode("utf-8")


def _indexed(row: tantivy.Document) -> IndexedChunk:
    stored = json.loads(bytes(row.get_first("hit") or b""))
    record = stored["document"]
    document = DocumentRecord(
        document_id=record["document_id"],
        content_type=record["content_type"],
        metadata=record["metadata"],
        content_hash=record["content_hash"],
        update_time=float(record["update_time"]),
        chunk_count=int(record["chunk_count"]),
    )
    chunk = ChunkRecord(
        key=_int(row.get_first("key")),
        document_id=document.document_id,
        ordinal=int(stored["ordinal"]),
        start=int(stored["start"]),
        end=int(stored["end"]),
        heading=stored["heading"],
        text=stored["text"],
        content_hash=stored["content_hash"],
        tokens=(),
        vector=None,
    )
    return IndexedChunk(chunk, document)
