"""The knowledge base: validated ingest, search, get and delete over the shared store.

Writes commit to the store (``store.py``: the source of truth, shared by every replica); the
replica's indexes then catch up with the store change by change (``index_sync.py``: this
replica's commit and any other's), and the writer returns once its change is searchable.
Searches run in worker threads on the last committed state of the indexes (``search.py``), so
they never wait for ingestion or for the database. ``follow()`` applies commits of other
replicas, woken by the store's notification or a slow poll (``following.py``). Validation,
preparing writes and the on-disk indexes each live in a module of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import structlog

from runtime.backoff import Backoff
from runtime.database import Database, DatabaseUnavailable
from runtime.database.sqlite import SQLiteDatabase
from runtime.embedding import Embedder
from runtime.supervisor import SupervisedLoop
from services.rag import ingest as preparing
from services.rag.chunking import ChunkingOptions
from services.rag.errors import DenseRetrievalDisabled, DocumentNotFound, InvalidArgument, NotReady
from services.rag.following import FollowingMetrics, StoreFollower
from services.rag.index_files import DenseModel, open_indexes
from services.rag.index_sync import Applied, IndexSync
from services.rag.search import Hit, Mode, search
from services.rag.store import (
    SCHEMA,
    ChunkRecord,
    Committed,
    DocumentRecord,
    NothingToWrite,
    StaleVersion,
    Store,
    Vector,
)
from services.rag.validation import (
    DocumentInput,
    Limits,
    Violations,
    batch_violations,
    check_document_id,
    document_violations,
    search_violations,
)

__all__ = ["DocumentInput", "Hit", "IngestOutcome", "IngestResult", "KnowledgeBase", "Limits", "Mode"]

_log = structlog.get_logger(__name__)
_T = TypeVar("_T")

_STALE_RETRIES = 5


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


class IndexView:
    """What a replica's indexes hold, for operators, tests and the evaluation."""

    def __init__(self, sync: IndexSync, restored: bool) -> None:
        self._sync = sync
        # True when start-up opened the saved indexes rather than building them from the store.
        self.restored = restored

    @property
    def generation(self) -> int:
        return self._sync.generation

    @property
    def chunks(self) -> _StoredChunks:
        """Every chunk in the index, read from disk on iteration (its length is a count)."""
        return _StoredChunks(self._sync)


class _StoredChunks:
    def __init__(self, sync: IndexSync) -> None:
        self._sync = sync

    def __len__(self) -> int:
        return len(self._sync.lexical)

    def __iter__(self) -> Iterator[ChunkRecord]:
        return (indexed.chunk for indexed in self._sync.lexical.chunks())


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
        metrics: FollowingMetrics | None = None,
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
        self._sync: IndexSync | None = None
        self._view: IndexView | None = None
        self._writes: set[asyncio.Task[Any]] = set()
        self._catch_up: asyncio.Task[None] | None = None
        self._save_task: asyncio.Task[None] | None = None
        self._follower = StoreFollower(store.db, self._follow, self._serving)
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
        metrics: FollowingMetrics | None = None,
        owns_database: bool = False,
        index_name: str = "index",
    ) -> KnowledgeBase:
        """A knowledge base on ``database`` (indexes kept in ``data_dir/index_name``), not loaded
        yet: it answers NotReady until ``start()`` has migrated the schema and opened the indexes."""
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
        metrics: FollowingMetrics | None = None,
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
        """Bring the schema to this build's version (once across replicas), open the saved indexes
        and apply what was committed since they were saved (or build them, when they cannot be used)."""
        started = time.perf_counter()
        await self._store.db.migrate(SCHEMA)
        opened = await asyncio.to_thread(open_indexes, self._index_dir, self._dense_model)
        if opened.generation is None:
            _log.info("rag.index.building_from_store", index_dir=str(self._index_dir), reason=opened.reason)
        sync = IndexSync(
            store=self._store,
            index_dir=self._index_dir,
            opened=opened,
            dense_model=self._dense_model,
            embed=self._embed if self._embedder is not None else None,
        )
        try:
            applied = await sync.catch_up()
        except BaseException:
            await sync.close()
            raise
        self._sync = sync
        self._view = IndexView(sync, restored=not applied.rebuilt)
        self._applied(applied, following=False)
        _log.info(
            "rag.knowledge_base.loaded",
            chunks=len(sync.lexical),
            generation=sync.generation,
            dense=self._dense_model is not None,
            indexes_restored=not applied.rebuilt,
            changes_applied=applied.documents if not applied.rebuilt else 0,
            seconds=round(time.perf_counter() - started, 3),
            embedded_at_start=self.embedded_chunks,
        )

    @property
    def dense_enabled(self) -> bool:
        return self._embedder is not None

    @property
    def generation(self) -> int:
        """The store generation this replica's indexes reflect."""
        return self._ready().generation

    @property
    def snapshot(self) -> IndexView:
        """What the indexes hold (their generation, chunks, whether start-up reused them)."""
        if self._view is None:
            raise NotReady()
        return self._view

    @property
    def indexes(self) -> IndexSync:
        """The indexes and what it cost to keep them in step (documents indexed per catch-up)."""
        return self._ready()

    @property
    def writes_in_flight(self) -> int:
        """Commits under way, including those whose caller has stopped waiting."""
        return len(self._writes)

    async def settle(self) -> None:
        """Wait for the commits under way (those whose callers gave up included) to finish."""
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    async def close(self) -> None:
        """Finish writes under way, save the vector graph (the lexical index is saved per commit) and close."""
        await self.settle()
        if self._save_task is not None:
            self._save_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._save_task
        if self._sync is not None:
            await self._sync.close()
        if self._owns_database:
            await self._store.db.close()

    # --- following the shared store ----------------------------------------------------------

    def follower(self, *, poll_s: float, backoff: Backoff | None = None) -> SupervisedLoop:
        """The loop that keeps the indexes in step with the store (not started: the caller owns it)."""
        return self._follower.loop(poll_s=poll_s, backoff=backoff)

    async def catch_up(self) -> None:
        """Return once the indexes reflect everything committed when this was called."""
        applied = await self._ready().catch_up()
        self._applied(applied, following=True)
        if self._metrics is not None:
            self._metrics.caught_up()

    async def _follow(self) -> None:
        applied = await self._ready().follow()
        if applied is None:
            return  # this replica's own commit under way: followed again once it is indexed
        self._applied(applied, following=True)
        if self._metrics is not None:
            self._metrics.caught_up()

    # --- writes ---------------------------------------------------------------------------

    def document_violations(self, document: DocumentInput, *, field: str) -> Violations:
        """What is wrong with one document, as (field path under ``field``, description) pairs."""
        return document_violations(document, self.limits, field=field)

    async def ingest(
        self, documents: Sequence[DocumentInput], *, field: str = "documents", wait_searchable: bool = True
    ) -> list[IngestResult]:
        """Add or replace ``documents`` atomically; by default returns once they are searchable.

        With ``wait_searchable=False`` it returns once they are committed and the indexes catch
        up in the background, where one catch-up covers every batch committed meanwhile.

        Invalid input raises InvalidArgument listing every violation, with field paths such
        as ``documents[2].text`` (``field`` names the list in the caller's request).
        """
        violations = batch_violations(documents, self.limits, field=field)
        if violations:
            raise InvalidArgument(violations)
        self._ready()
        embed = self._embed if self._embedder is not None else None
        for _attempt in range(_STALE_RETRIES):
            unchanged = await preparing.unchanged_versions(self._store, documents)
            changed = [d for d in documents if d.document_id not in unchanged]
            prepared = await asyncio.to_thread(preparing.prepare, changed, self._chunking)
            vectors = await preparing.embed_missing(self._store, embed, prepared)
            # Shielded: a caller that is cancelled (deadline, client gone) stops waiting, but a
            # commit under way still completes together with its indexing.
            try:
                return await asyncio.shield(
                    self._track(self._commit_ingest(documents, prepared, vectors, unchanged, wait_searchable))
                )
            except StaleVersion as stale:
                _log.info("rag.ingest.changed_concurrently", documents=list(stale.document_ids), retrying=True)
        raise StaleVersion([d.document_id for d in documents])

    async def delete(self, document_id: str) -> None:
        """Remove a document and its chunks; DocumentNotFound if there is none."""
        check_document_id(document_id)
        self._ready()
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
        prepared: Sequence[preparing.Prepared],
        vectors: Mapping[str, Vector],
        unchanged: Mapping[str, Any],
        wait_searchable: bool,
    ) -> list[IngestResult]:
        with self._own_commit():
            committed: Committed | None
            try:
                committed = await self._store.apply(preparing.writes(prepared, vectors), unchanged=unchanged)
                generation, outcomes = committed.generation, dict(committed.outcomes)
            except NothingToWrite:
                # "Searchable" still means: whatever the caller committed before (earlier batches of
                # a stream) is indexed too.
                committed = None
                generation = await self._store.generation()
                stored = await self._store.versions(d.document_id for d in documents)
                outcomes = {d: ("unchanged", found.chunk_count) for d, found in stored.items()}
            results = [
                IngestResult(d.document_id, IngestOutcome(outcomes[d.document_id][0]), outcomes[d.document_id][1])
                for d in documents
            ]
            if wait_searchable:
                await (self._refresh(generation) if committed is None else self._indexed(committed))
            elif self._catch_up is None or self._catch_up.done():
                self._catch_up = self._track(self._catch_up_in_background())
            return results

    async def _commit_delete(self, document_id: str) -> None:
        with self._own_commit():
            try:
                committed = await self._store.apply([], deletes=[document_id])
            except KeyError:
                raise DocumentNotFound(document_id) from None
            await self._indexed(committed)

    @contextlib.contextmanager
    def _own_commit(self) -> Iterator[None]:
        """Around a commit of this replica and its indexing: the follower stands aside meanwhile
        (it would index the same documents by reading them back) and follows once it is over."""
        sync = self._ready()
        sync.begin_own_commit()
        try:
            yield
        finally:
            if sync.end_own_commit():
                self._follower.wake.set()

    async def _refresh(self, generation: int) -> None:
        """Return once the indexes reflect ``generation`` or later."""
        applied = await self._ready().catch_up(at_least=generation)
        self._applied(applied, following=False)

    async def _indexed(self, committed: Committed) -> None:
        """Return once the indexes reflect this replica's own commit (indexed from what it wrote)."""
        applied = await self._ready().apply_commit(committed)
        self._applied(applied, following=False)

    async def _catch_up_in_background(self) -> None:
        # Loops rather than catching up once: commits that land meanwhile are picked up by the
        # next round, and the task ends only when nothing committed is left unindexed.
        sync = self._ready()
        while True:
            try:
                if sync.generation >= await self._store.generation():
                    return
                applied = await sync.catch_up()
                self._applied(applied, following=False)
            except DatabaseUnavailable:
                # Nobody waits on this task: the follower applies these commits once the
                # database is back.
                self._follower.wake.set()
                return

    def _applied(self, applied: Applied, *, following: bool) -> None:
        if not applied.changes and not applied.rebuilt:
            return
        # Staleness: how long the oldest change now searchable waited since its commit.
        lag = time.time() - min(c.committed_at for c in applied.changes) if applied.changes else None
        if self._metrics is not None:
            self._metrics.applied(applied.generation, lag_s=lag)
        # Catch-ups that bring in other replicas' commits are what an operator watches; a
        # replica's own writes are in the access log already.
        (_log.info if following else _log.debug)(
            "rag.index.caught_up",
            generation=applied.generation,
            changes=len(applied.changes),
            documents=applied.documents,
            staleness_s=None if lag is None else round(lag, 4),
        )
        self._schedule_save()

    # --- reads ----------------------------------------------------------------------------

    async def get(self, document_id: str) -> StoredDocument:
        check_document_id(document_id)
        self._ready()
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
        violations = search_violations(query, top_k, self.limits)
        if violations:
            raise InvalidArgument(violations)
        mode = mode or (Mode.HYBRID if self._embedder is not None else Mode.BM25)
        if mode is not Mode.BM25 and self._embedder is None:
            raise DenseRetrievalDisabled()
        sync = self._ready()
        embedder = self._embedder
        # Ask each retriever for more than top_k: fusion needs depth, and duplicates are collapsed.
        candidates = max(4 * top_k, 50)

        def run() -> list[Hit]:
            vector = embedder.embed([query])[0] if embedder is not None and mode is not Mode.BM25 else None
            return search(
                sync.lexical,
                sync.dense,
                query,
                top_k=top_k,
                metadata_filter=metadata_filter or {},
                mode=mode,
                query_vector=vector,
                candidates=candidates,
            )

        return await asyncio.to_thread(run)

    # --- internals ------------------------------------------------------------------------

    def _ready(self) -> IndexSync:
        if self._sync is None:
            raise NotReady()
        return self._sync

    def _serving(self) -> str:
        generation = self._sync.generation if self._sync is not None else None
        return f"searches from the indexes at generation {generation}"

    def _embed(self, texts: Sequence[str]) -> Vector:
        assert self._embedder is not None
        self.embedded_chunks += len(texts)
        return self._embedder.embed(texts)

    def _schedule_save(self) -> None:
        if self._sync is None or not self._sync.dense_unsaved:
            return
        if self._save_task is None or self._save_task.done():
            self._save_task = asyncio.create_task(self._save_later(), name="rag-index-save")

    async def _save_later(self) -> None:
        # Debounced: the vector graph is saved once a burst of changes settles (the lexical index
        # commits at every generation and needs no save).
        sync = self._ready()
        while sync.dense_unsaved:
            await asyncio.sleep(self._save_delay_s)
            # Shielded: a save under way finishes even if close() cancels this task.
            await asyncio.shield(sync.save_dense())
