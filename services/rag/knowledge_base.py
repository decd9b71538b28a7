"""The knowledge base: validated ingest, hybrid search, get and delete, over the shared store.

Writes commit to the store (``store.py``: the source of truth, shared by every replica); after
each commit the catalog catches up with the store (this replica's commit and any other's) and a
new index snapshot is built in a worker thread and swapped in, and the writer returns once its
change is searchable. Searches run in worker threads on the snapshot current when they start,
so they never wait for ingestion or for the database. Concurrent writers share rebuilds:
whoever takes the rebuild lock indexes everything committed so far. ``follow()`` does the same
for commits of other replicas, woken by the store's notification or a slow poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import time
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import structlog

from runtime.backoff import Backoff
from runtime.database import Database, DatabaseUnavailable
from runtime.database.sqlite import SQLiteDatabase
from runtime.embedding import Embedder
from services.rag.bm25_index import tokenize
from services.rag.chunking import ChunkingOptions, ContentType, chunk_document
from services.rag.errors import DenseRetrievalDisabled, DocumentNotFound, InvalidArgument, NotReady
from services.rag.follower import FollowerMetrics
from services.rag.snapshot import DenseModel, Hit, IndexSnapshot, Mode, build_snapshot
from services.rag.store import (
    CHANGES_RETAINED,
    GENERATION_CHANNEL,
    SCHEMA,
    Change,
    ChunkRecord,
    DocumentRecord,
    DocumentState,
    DocumentVersion,
    DocumentWrite,
    NewChunk,
    NothingToWrite,
    StaleVersion,
    Store,
    Vector,
)

__all__ = ["DocumentInput", "Hit", "IngestOutcome", "IngestResult", "KnowledgeBase", "Limits", "Mode"]

_log = structlog.get_logger(__name__)
_T = TypeVar("_T")

_DOCUMENT_ID = re.compile(r"[A-Za-z0-9._:/-]{1,128}")
_DOCUMENT_ID_RULE = "must be 1 to 128 characters of letters, digits and . _ : / -"
_STALE_RETRIES = 5
_CONTENT_TYPES = {"": ContentType.PLAIN_TEXT, **{t.value: t for t in ContentType}}


@dataclass(frozen=True, slots=True)
class Limits:
    max_document_bytes: int = 1 << 20
    max_batch_documents: int = 100
    max_query_chars: int = 2000
    max_top_k: int = 50
    max_metadata_entries: int = 32
    max_metadata_key_chars: int = 64
    max_metadata_value_chars: int = 256


@dataclass(frozen=True, slots=True)
class DocumentInput:
    document_id: str
    text: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    content_type: str = ""


class IngestOutcome(Enum):
    CREATED = "created"
    REPLACED = "replaced"
    UNCHANGED = "unchanged"


@dataclass(frozen=True, slots=True)
class IngestResult:
    document_id: str
    outcome: IngestOutcome
    chunk_count: int


@dataclass(frozen=True, slots=True)
class StoredDocument:
    record: DocumentRecord
    text: str


def chunk_id(chunk: ChunkRecord) -> str:
    """The public ID of a chunk: stable for one version of its document."""
    return f"{chunk.document_id}#{chunk.ordinal}"


@dataclass(frozen=True, slots=True)
class _Prepared:
    document: DocumentInput
    content_type: ContentType
    content_hash: str
    chunks: list[NewChunk]
    index_texts: list[str]


class KnowledgeBase:
    def __init__(
        self,
        *,
        store: Store,
        index_dir: Path,
        embedder: Embedder | None,
        chunking: ChunkingOptions,
        limits: Limits,
        save_delay_s: float,
        owns_database: bool = False,
        metrics: FollowerMetrics | None = None,
    ) -> None:
        self._store = store
        self._owns_database = owns_database
        self._index_dir = index_dir
        self._embedder = embedder
        self._dense_model = DenseModel(embedder.model_name, embedder.dimensions) if embedder is not None else None
        self._chunking = chunking
        self.limits = limits
        self._save_delay_s = save_delay_s
        self._metrics = metrics
        self._rebuild_lock = asyncio.Lock()
        # The catalog: the committed state as of ``_generation``, which the next snapshot indexes.
        self._documents: dict[str, DocumentRecord] = {}
        self._chunks: dict[int, ChunkRecord] = {}
        self._keys_by_document: dict[str, list[int]] = {}
        self._writes: set[asyncio.Task[Any]] = set()
        self._catch_up: asyncio.Task[None] | None = None
        self._generation = 0
        self._snapshot: IndexSnapshot | None = None
        self._save_task: asyncio.Task[None] | None = None
        self._saved_generation = -1
        self._save_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._listening = False
        # Texts this process has embedded (never those whose vectors it found in the store).
        self.embedded_chunks = 0

    @classmethod
    def create(
        cls,
        data_dir: Path,
        *,
        database: Database,
        embedder: Embedder | None = None,
        chunking: ChunkingOptions | None = None,
        limits: Limits | None = None,
        save_delay_s: float = 2.0,
        metrics: FollowerMetrics | None = None,
        owns_database: bool = False,
        index_name: str = "index",
    ) -> KnowledgeBase:
        """A knowledge base on ``database`` (indexes saved in ``data_dir/index_name``), not loaded
        yet: it answers NotReady until ``start()`` has migrated the schema and loaded the store."""
        return cls(
            store=Store(database, model=embedder.model_name if embedder else None),
            index_dir=data_dir / index_name,
            embedder=embedder,
            chunking=chunking or ChunkingOptions(),
            limits=limits or Limits(),
            save_delay_s=save_delay_s,
            owns_database=owns_database,
            metrics=metrics,
        )

    @classmethod
    async def open(
        cls,
        data_dir: Path,
        *,
        database: Database | None = None,
        embedder: Embedder | None = None,
        chunking: ChunkingOptions | None = None,
        limits: Limits | None = None,
        save_delay_s: float = 2.0,
        metrics: FollowerMetrics | None = None,
        index_name: str = "index",
    ) -> KnowledgeBase:
        """Create and start; without ``database``, on the embedded SQLite file ``data_dir/rag.sqlite3``
        (opened and closed with the knowledge base; a given database is the caller's to close)."""
        db = database or await SQLiteDatabase.open(data_dir / "rag.sqlite3")
        kb = cls.create(
            data_dir,
            database=db,
            embedder=embedder,
            chunking=chunking,
            limits=limits,
            save_delay_s=save_delay_s,
            metrics=metrics,
            owns_database=database is None,
            index_name=index_name,
        )
        try:
            await kb.start()
        except BaseException:
            if database is None:
                await db.close()
            raise
        return kb

    async def start(self) -> None:
        """Bring the schema to this build's version (once across replicas) and load the store,
        with the saved indexes when they are current."""
        await self._store.db.migrate(SCHEMA)
        await self._load()

    @property
    def dense_enabled(self) -> bool:
        return self._embedder is not None

    @property
    def generation(self) -> int:
        """The generation of the store the live snapshot (or the one being built) reflects."""
        return self._generation

    @property
    def writes_in_flight(self) -> int:
        """Commits under way, including those whose caller has stopped waiting."""
        return len(self._writes)

    async def settle(self) -> None:
        """Wait for the commits under way (those whose callers gave up included) to finish."""
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    @property
    def snapshot(self) -> IndexSnapshot:
        """The index snapshot searches currently use."""
        if self._snapshot is None:
            raise NotReady()
        return self._snapshot

    async def close(self) -> None:
        """Finish writes under way, save the indexes (so the next start loads them) and close."""
        await self.settle()
        if self._save_task is not None:
            self._save_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._save_task
        await self._save_now()
        if self._owns_database:
            await self._store.db.close()

    # --- following the shared store ----------------------------------------------------------

    async def follow(self, *, poll_s: float, backoff: Backoff | None = None) -> None:
        """Keep the snapshot in step with the store, for as long as it runs (a supervised loop).

        Woken at once by each commit's notification (every replica's, on PostgreSQL), and every
        ``poll_s`` regardless, in case a notification was lost. While the database is down the
        snapshot stays as it is, searches keep being served from it, and this retries with backoff.
        """
        if not self._listening:
            await self._store.db.listen(GENERATION_CHANNEL, self._wake.set)
            self._listening = True
        backoff = backoff or Backoff(initial=0.2, maximum=5.0)
        unavailable = False
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=poll_s)
            self._wake.clear()
            try:
                await self.catch_up()
            except DatabaseUnavailable as error:
                delay = backoff.next_delay()
                (_log.debug if unavailable else _log.warning)(
                    "rag.follower.database_unavailable",
                    error=str(error),
                    serving=f"searches from the snapshot at generation {self._generation}",
                    retry_in=round(delay, 2),
                )
                unavailable = True
                await asyncio.sleep(delay)
                self._wake.set()
                continue
            if unavailable:
                _log.info("rag.follower.database_back", generation=self._generation)
            unavailable = False
            backoff.reset()

    async def catch_up(self) -> None:
        """Return once the live snapshot reflects everything committed when this was called."""
        await self._refresh(await self._store.generation(), following=True)
        if self._metrics is not None:
            self._metrics.caught_up()

    # --- writes ---------------------------------------------------------------------------

    async def ingest(
        self, documents: Sequence[DocumentInput], *, field: str = "documents", wait_searchable: bool = True
    ) -> list[IngestResult]:
        """Add or replace ``documents`` atomically; by default returns once they are searchable.

        With ``wait_searchable=False`` it returns once they are committed and the index catches
        up in the background, where one rebuild covers every batch committed meanwhile: a long
        stream of batches then costs a few index rebuilds instead of one per batch.

        Invalid input raises InvalidArgument listing every violation, with field paths such
        as ``documents[2].text`` (``field`` names the list in the caller's request).
        """
        violations: list[tuple[str, str]] = []
        if not documents:
            violations.append((field, "at least one document is required"))
        elif len(documents) > self.limits.max_batch_documents:
            violations.append(
                (
                    field,
                    f"at most {self.limits.max_batch_documents} documents per request, got {len(documents)};"
                    " stream larger batches with StreamIngestDocuments",
                )
            )
        seen: set[str] = set()
        for index, document in enumerate(documents):
            violations += self.document_violations(document, field=f"{field}[{index}]")
            if document.document_id in seen:
                violations.append(
                    (f"{field}[{index}].document_id", f"{document.document_id!r} appears twice in one request")
                )
            seen.add(document.document_id)
        if violations:
            raise InvalidArgument(violations)
        if self._snapshot is None:
            raise NotReady()

        for _attempt in range(_STALE_RETRIES):
            # Re-ingesting what is already stored (a seed on every start, a retried batch, the
            # same document through another replica) costs a hash per document: only new or
            # changed documents are chunked and embedded, and stored embeddings are reused.
            stored = await self._store.versions(d.document_id for d in documents)
            unchanged = {
                d.document_id: found.version
                for d in documents
                if (found := stored.get(d.document_id)) is not None and found.version == _version(d)
            }
            changed = [d for d in documents if d.document_id not in unchanged]
            prepared = await asyncio.to_thread(self._prepare, changed)
            vectors = await self._embed_missing(prepared)
            # Shielded: a caller that is cancelled (deadline, client gone) stops waiting, but a
            # commit under way still completes together with its index rebuild.
            try:
                return await asyncio.shield(
                    self._track(self._commit_ingest(documents, prepared, vectors, unchanged, wait_searchable))
                )
            except StaleVersion as stale:
                _log.info("rag.ingest.changed_concurrently", documents=list(stale.document_ids), retrying=True)
        raise StaleVersion([d.document_id for d in documents])

    async def delete(self, document_id: str) -> None:
        """Remove a document and its chunks; DocumentNotFound if there is none."""
        _check_document_id(document_id)
        if self._snapshot is None:
            raise NotReady()
        await asyncio.shield(self._track(self._commit_delete(document_id)))

    def _track(self, write: Coroutine[Any, Any, _T]) -> asyncio.Task[_T]:
        """Run a write as a task that close() waits for, even if its caller stops waiting."""
        task = asyncio.ensure_future(write)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        return task

    async def _commit_ingest(
        self,
        documents: Sequence[DocumentInput],
        prepared: Sequence[_Prepared],
        vectors: Mapping[str, Vector],
        unchanged: Mapping[str, DocumentVersion],
        wait_searchable: bool,
    ) -> list[IngestResult]:
        writes = [
            DocumentWrite(
                document_id=item.document.document_id,
                content_type=item.content_type.value,
                metadata=dict(item.document.metadata),
                text=item.document.text,
                content_hash=item.content_hash,
                chunks=item.chunks,
                vectors={c.content_hash: vectors[c.content_hash] for c in item.chunks if c.content_hash in vectors},
            )
            for item in prepared
        ]
        try:
            committed = await self._store.apply(writes, unchanged=unchanged)
        except NothingToWrite:
            # "Searchable" still means: whatever the caller committed before (earlier batches of
            # a stream) is indexed too.
            generation = await self._store.generation()
            stored = await self._store.versions(d.document_id for d in documents)
            outcomes = {d: ("unchanged", found.chunk_count) for d, found in stored.items()}
        else:
            generation, outcomes = committed.generation, dict(committed.outcomes)
        results = [
            IngestResult(d.document_id, IngestOutcome(outcomes[d.document_id][0]), outcomes[d.document_id][1])
            for d in documents
        ]
        if wait_searchable:
            await self._refresh(generation)
        elif self._catch_up is None or self._catch_up.done():
            self._catch_up = self._track(self._catch_up_with_commits())
        return results

    async def _commit_delete(self, document_id: str) -> None:
        try:
            committed = await self._store.apply([], deletes=[document_id])
        except KeyError:
            raise DocumentNotFound(document_id) from None
        await self._refresh(committed.generation)

    # --- reads ----------------------------------------------------------------------------

    async def get(self, document_id: str) -> StoredDocument:
        _check_document_id(document_id)
        if self._snapshot is None:
            raise NotReady()
        found = await self._store.get_document(document_id)
        if found is None:
            raise DocumentNotFound(document_id)
        return StoredDocument(*found)

    async def search(
        self,
        query: str,
        *,
        top_k: int,
        metadata_filter: Mapping[str, str] | None = None,
        mode: Mode | None = None,
    ) -> list[Hit]:
        """The ``top_k`` most relevant chunks, best first; ``mode`` defaults to hybrid when dense is on."""
        violations: list[tuple[str, str]] = []
        if not query.strip():
            violations.append(("query", "is required and must contain a non-whitespace character"))
        elif len(query) > self.limits.max_query_chars:
            violations.append(("query", f"is {len(query)} characters; the maximum is {self.limits.max_query_chars}"))
        if not 1 <= top_k <= self.limits.max_top_k:
            violations.append(("top_k", f"must be between 1 and {self.limits.max_top_k}, got {top_k}"))
        if violations:
            raise InvalidArgument(violations)
        mode = mode or (Mode.HYBRID if self._embedder is not None else Mode.BM25)
        if mode is not Mode.BM25 and self._embedder is None:
            raise DenseRetrievalDisabled()
        snapshot = self._snapshot
        if snapshot is None:
            raise NotReady()
        embedder = self._embedder
        # Ask each retriever for more than top_k: fusion needs depth, and duplicates are collapsed.
        candidates = max(4 * top_k, 50)

        def run() -> list[Hit]:
            vector = embedder.embed([query])[0] if embedder is not None and mode is not Mode.BM25 else None
            return snapshot.search(
                query,
                top_k=top_k,
                metadata_filter=metadata_filter or {},
                mode=mode,
                query_vector=vector,
                candidates=candidates,
            )

        return await asyncio.to_thread(run)

    # --- internals ------------------------------------------------------------------------

    def document_violations(self, document: DocumentInput, *, field: str) -> list[tuple[str, str]]:
        """What is wrong with one document, as (field path under ``field``, description) pairs."""
        limits = self.limits
        out: list[tuple[str, str]] = []
        if not _DOCUMENT_ID.fullmatch(document.document_id):
            out.append((f"{field}.document_id", _DOCUMENT_ID_RULE))
        if not document.text.strip():
            out.append((f"{field}.text", "is required and must contain a non-whitespace character"))
        else:
            size = len(document.text.encode("utf-8"))
            if size > limits.max_document_bytes:
                out.append(
                    (
                        f"{field}.text",
                        f"is {size} bytes of UTF-8; the limit is {limits.max_document_bytes} bytes:"
                        " split it into several documents",
                    )
                )
        if document.content_type not in _CONTENT_TYPES:
            out.append((f"{field}.content_type", "must be empty, text/plain or text/markdown"))
        if len(document.metadata) > limits.max_metadata_entries:
            out.append((f"{field}.metadata", f"at most {limits.max_metadata_entries} entries"))
        for key, value in document.metadata.items():
            if not key or len(key) > limits.max_metadata_key_chars:
                out.append(
                    (f"{field}.metadata[{key!r}]", f"keys must be 1 to {limits.max_metadata_key_chars} characters")
                )
            elif len(value) > limits.max_metadata_value_chars:
                out.append(
                    (
                        f"{field}.metadata[{key!r}]",
                        f"values must be at most {limits.max_metadata_value_chars} characters",
                    )
                )
        return out

    def _prepare(self, documents: Sequence[DocumentInput]) -> list[_Prepared]:
        """Chunk and tokenize (CPU-bound: runs in a worker thread)."""
        prepared: list[_Prepared] = []
        for document in documents:
            content_type = _CONTENT_TYPES[document.content_type]
            chunks: list[NewChunk] = []
            index_texts: list[str] = []
            seen: set[str] = set()
            for piece in chunk_document(document.text, content_type, self._chunking):
                # The heading path gives a chunk its context ("Retries" under "Envoy > Routes").
                index_text = f"{piece.heading}\n{piece.text}" if piece.heading else piece.text
                digest = hashlib.sha256(index_text.encode("utf-8")).hexdigest()
                if digest in seen:
                    continue
                seen.add(digest)
                chunks.append(NewChunk(len(chunks), piece.start, piece.end, piece.heading, digest, ()))
                index_texts.append(index_text)
            token_lists = tokenize(index_texts) if index_texts else []
            chunks = [
                NewChunk(c.ordinal, c.start, c.end, c.heading, c.content_hash, tuple(tokens))
                for c, tokens in zip(chunks, token_lists, strict=True)
            ]
            prepared.append(
                _Prepared(
                    document=document,
                    content_type=content_type,
                    content_hash=_content_hash(document.text),
                    chunks=chunks,
                    index_texts=index_texts,
                )
            )
        return prepared

    async def _embed_missing(self, prepared: Sequence[_Prepared]) -> dict[str, Vector]:
        """Vectors for every chunk hash in ``prepared``: stored ones (any replica's) reused, the rest embedded."""
        if self._embedder is None:
            return {}
        texts = {c.content_hash: t for p in prepared for c, t in zip(p.chunks, p.index_texts, strict=True)}
        vectors = await self._store.stored_vectors(texts)
        missing = [h for h in texts if h not in vectors]
        if missing:
            embedded = await asyncio.to_thread(self._embed, [texts[h] for h in missing])
            vectors.update(zip(missing, embedded, strict=True))
        return vectors

    def _apply_states(self, states: Iterable[DocumentState]) -> None:
        """Bring the catalog's copy of each document to its committed state."""
        for state in states:
            for key in self._keys_by_document.pop(state.document_id, []):
                del self._chunks[key]
            self._documents.pop(state.document_id, None)
            if state.record is None:
                continue
            self._documents[state.document_id] = state.record
            self._keys_by_document[state.document_id] = [c.key for c in state.chunks]
            for chunk in state.chunks:
                self._chunks[chunk.key] = chunk

    async def _sync_catalog(self) -> list[Change]:
        """Apply what was committed since the catalog's generation; returns the changes applied."""
        head = await self._store.generation()
        if head <= self._generation:
            return []
        changes: list[Change] = []
        if head - self._generation >= CHANGES_RETAINED // 2:
            # Too far behind for the change log (or just started): reload everything.
            loaded = await self._store.load_all()
            self._documents = {d.document_id: d for d in loaded.documents}
            self._chunks = {c.key: c for c in loaded.chunks}
            self._keys_by_document = {}
            for chunk in loaded.chunks:
                self._keys_by_document.setdefault(chunk.document_id, []).append(chunk.key)
            head = loaded.generation
        else:
            changes = await self._store.changes(after=self._generation, up_to=head)
            states = await self._store.document_states({c.document_id for c in changes})
            self._apply_states(states.values())
            if any(self._chunks) and list(self._chunks) != sorted(self._chunks):
                # A document read ahead of its generation can bring keys in out of order; the
                # catalog stays in key order so saved snapshots match on the next start.
                self._chunks = dict(sorted(self._chunks.items()))
        self._generation = head
        if self._embedder is not None:
            await self._backfill_vectors()
        return changes

    async def _load(self) -> None:
        loaded = await self._store.load_all()
        self._documents = {d.document_id: d for d in loaded.documents}
        self._chunks = {c.key: c for c in loaded.chunks}
        for chunk in loaded.chunks:
            self._keys_by_document.setdefault(chunk.document_id, []).append(chunk.key)
        self._generation = loaded.generation
        if self._embedder is not None:
            await self._backfill_vectors()
        self._snapshot = await asyncio.to_thread(
            build_snapshot,
            generation=self._generation,
            documents=dict(self._documents),
            chunks=list(self._chunks.values()),
            previous=None,
            dense_model=self._dense_model,
            saved=self._index_dir,
        )
        self._saved_generation = self._generation
        if self._metrics is not None:
            self._metrics.snapshot_live(self._generation, lag_s=None)
        _log.info(
            "rag.knowledge_base.loaded",
            documents=len(self._documents),
            chunks=len(self._chunks),
            generation=self._generation,
            dense=self._dense_model is not None,
            indexes_restored=self._snapshot.restored,
            embedded_at_start=self.embedded_chunks,
        )

    async def _backfill_vectors(self) -> None:
        """Embed chunks no replica has embedded under this model (ingested with dense off, say)."""
        assert self._embedder is not None
        lacking = [c for c in self._chunks.values() if c.vector is None]
        if not lacking:
            return
        texts = {c.content_hash: f"{c.heading}\n{c.text}" if c.heading else c.text for c in lacking}
        # Another replica may have embedded them since they were read.
        vectors = await self._store.stored_vectors(texts)
        missing = [h for h in texts if h not in vectors]
        if missing:
            _log.info("rag.knowledge_base.backfilling_embeddings", chunks=len(missing))
            embedded = await asyncio.to_thread(self._embed, [texts[h] for h in missing])
            fresh = dict(zip(missing, embedded, strict=True))
            await self._store.put_vectors(fresh)
            vectors.update(fresh)
        for chunk in lacking:
            self._chunks[chunk.key] = replace(chunk, vector=vectors[chunk.content_hash])

    def _embed(self, texts: Sequence[str]) -> Vector:
        assert self._embedder is not None
        self.embedded_chunks += len(texts)
        return self._embedder.embed(texts)

    async def _refresh(self, generation: int, *, following: bool = False) -> None:
        """Return once a snapshot at ``generation`` or later is live."""
        async with self._rebuild_lock:
            current = self._snapshot
            if current is not None and current.generation >= generation:
                return
            # Everything committed so far, not just this caller's change: concurrent writers
            # waiting on the lock then find their change already indexed.
            changes = await self._sync_catalog()
            target = self._generation
            self._snapshot = await asyncio.to_thread(
                build_snapshot,
                generation=target,
                documents=dict(self._documents),
                chunks=list(self._chunks.values()),
                previous=current,
                dense_model=self._dense_model,
            )
        # Staleness: how long the oldest change now searchable waited since its commit.
        lag = time.time() - min(c.committed_at for c in changes) if changes else None
        if self._metrics is not None:
            self._metrics.snapshot_live(target, lag_s=lag)
        # Swaps that bring in other replicas' commits are what an operator watches; a replica's
        # own writes are in the access log already.
        (_log.info if following and changes else _log.debug)(
            "rag.snapshot.live",
            generation=target,
            changes=len(changes),
            staleness_s=None if lag is None else round(lag, 4),
        )
        self._schedule_save()

    async def _catch_up_with_commits(self) -> None:
        # Loops rather than rebuilding once: commits that land during a rebuild are picked up by
        # the next round, and the task ends only when nothing committed is left unindexed.
        while True:
            try:
                head = await self._store.generation()
                if self._snapshot is not None and self._snapshot.generation >= head:
                    return
                await self._refresh(head)
            except DatabaseUnavailable:
                # Nobody waits on this task: the follower indexes these commits once the
                # database is back.
                self._wake.set()
                return

    def _schedule_save(self) -> None:
        if self._save_task is None or self._save_task.done():
            self._save_task = asyncio.create_task(self._save_later(), name="rag-index-save")

    async def _save_later(self) -> None:
        # Debounced: a burst of ingests is saved once, after it settles; changes that land
        # while a save runs are picked up by the next round.
        while self._snapshot is not None and self._snapshot.generation != self._saved_generation:
            await asyncio.sleep(self._save_delay_s)
            # Shielded: a save under way finishes even if close() cancels this task, and close()
            # waits for it on the lock instead of writing the same directory at the same time.
            await asyncio.shield(self._save_now())

    async def _save_now(self) -> None:
        async with self._save_lock:
            snapshot = self._snapshot
            if snapshot is None or snapshot.generation == self._saved_generation:
                return
            await asyncio.to_thread(snapshot.save, self._index_dir)
            self._saved_generation = snapshot.generation


def _version(document: DocumentInput) -> DocumentVersion:
    return DocumentVersion(
        _content_hash(document.text), _CONTENT_TYPES[document.content_type].value, dict(document.metadata)
    )


def _content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _check_document_id(document_id: str) -> None:
    if not _DOCUMENT_ID.fullmatch(document_id):
        raise InvalidArgument([("document_id", _DOCUMENT_ID_RULE)])
