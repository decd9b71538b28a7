"""Keeping a replica's search indexes in step with the store, change by change.

The indexes reflect one store generation. Catching up reads the change log after it (which
documents each later commit touched) and the committed state of just those documents, replaces
them in the indexes and commits once: the work is proportional to what changed, never to the
corpus. An index too far behind the retained change log, or new, is rebuilt by paging through
the store, one page of documents in memory at a time.

Every caller goes through one lock, so there is one writer per index; searches never take it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import structlog

from services.rag.chunking import index_text
from services.rag.dense_index import DenseIndex
from services.rag.index_files import DenseModel, Manifest, OpenedIndexes, save_dense, write_manifest
from services.rag.store import CHANGES_RETAINED, Change, Committed, DocumentState, Store, Vector

_log = structlog.get_logger(__name__)

# Documents read from the store and staged per round trip.
_PAGE = 500

Embed = Callable[[Sequence[str]], Vector]


@dataclass(frozen=True, slots=True)
class Applied:
    """What one catch-up did: the generation reached, the changes applied, documents (re)indexed."""

    generation: int
    changes: list[Change] = field(default_factory=list)
    documents: int = 0
    rebuilt: bool = False


class IndexSync:
    def __init__(
        self,
        *,
        store: Store,
        index_dir: Path,
        opened: OpenedIndexes,
        dense_model: DenseModel | None,
        embed: Embed | None,
    ) -> None:
        self._store = store
        self._index_dir = index_dir
        self.lexical = opened.lexical
        self.dense = opened.dense
        self._dense_model = dense_model
        self._embed = embed
        self._lock = asyncio.Lock()
        self.generation = opened.generation if opened.generation is not None else -1
        self._dense_saved = self.generation
        # Documents (re)indexed per catch-up, most recent last: what a change cost, in documents.
        self.indexed_per_catch_up: list[int] = []
        # Documents whose state was read from the store to index them: other replicas' changes
        # and rebuilds; this replica's own commits are indexed from what they wrote.
        self.read_back = 0
        # This replica's own commits between the start of their transaction and their indexing,
        # and whether a follower's catch-up was put off meanwhile (see ``follow``).
        self._own_commits = 0
        self._follow_deferred = False

    @property
    def ready(self) -> bool:
        return self.generation >= 0

    async def catch_up(self, *, at_least: int | None = None) -> Applied:
        """Apply what the store committed since the indexes' generation (up to its head now).

        With ``at_least``, returns at once if the indexes are already there (a writer whose
        change another caller's catch-up already applied).
        """
        async with self._lock:
            if at_least is not None and self.generation >= at_least:
                return Applied(self.generation)
            return await self._catch_up(await self._store.generation())

    async def follow(self) -> Applied | None:
        """The follower's catch-up: None, and remembered, while this replica's own commit is under way.

        That commit's indexing (``apply_commit``) brings the indexes to its generation, so a
        catch-up meanwhile would only race it to the same documents and index them the slow way,
        reading back what the writer holds. ``end_own_commit`` says when to follow again.
        """
        if self._own_commits:
            self._follow_deferred = True
            return None
        async with self._lock:
            head = await self._store.generation()
            # A commit of this replica's own that began while the head was read may be in it.
            if self._own_commits:
                self._follow_deferred = True
                return None
            return await self._catch_up(head)

    def begin_own_commit(self) -> None:
        """Before this replica's own transaction: the follower waits for ``end_own_commit``."""
        self._own_commits += 1

    def end_own_commit(self) -> bool:
        """After that commit is indexed (or failed): whether a follower's catch-up was put off
        meanwhile and is due now (others' commits may have come after this one)."""
        self._own_commits -= 1
        due = self._follow_deferred and not self._own_commits
        if due:
            self._follow_deferred = False
        return due

    async def apply_commit(self, committed: Committed) -> Applied:
        """Return once the indexes reflect ``committed`` (this replica's own commit) or later.

        When it is the very next generation, its documents are indexed from what the commit
        wrote (``committed.states``), with no read of the store: the writer knows the state it
        just committed. When other commits came between, this catches up through the store.
        """
        async with self._lock:
            if self.generation >= committed.generation:
                return Applied(self.generation)
            if self.generation != committed.generation - 1:
                return await self._catch_up(await self._store.generation())
            document_ids = sorted(committed.states)
            await self._stage(document_ids, [committed.states[d] for d in document_ids], self.dense)
            await self._commit(committed.generation)
            self.indexed_per_catch_up.append(len(document_ids))
            changes = [Change(committed.generation, d, committed.committed_at) for d in document_ids]
            return Applied(committed.generation, changes, len(document_ids))

    async def _catch_up(self, head: int) -> Applied:
        """Apply the changes up to ``head``, the store's generation read under the lock."""
        if self.generation < 0 or head < self.generation or head - self.generation >= CHANGES_RETAINED // 2:
            return await self._rebuild(head)
        if head == self.generation:
            return Applied(head)
        changes = await self._store.changes(after=self.generation, up_to=head)
        document_ids = sorted({c.document_id for c in changes})
        for page in _pages(document_ids):
            states = await self._store.document_states(page)
            self.read_back += len(states)
            await self._stage(page, list(states.values()), self.dense)
        await self._commit(head)
        self.indexed_per_catch_up.append(len(document_ids))
        return Applied(head, changes, len(document_ids))

    async def _rebuild(self, head: int) -> Applied:
        """Index the whole store as of ``head`` or later (pages read after ``head`` may be newer:
        the next catch-up applies those changes again, which is harmless)."""
        started = time.perf_counter()
        await asyncio.to_thread(self.lexical.clear)
        # Built aside and swapped in with the lexical commit: searches meanwhile see the old state.
        dense = DenseIndex.empty(self._dense_model.dimensions) if self._dense_model is not None else None
        count, after = 0, ""
        while True:
            page = await self._store.document_ids(after=after, limit=_PAGE)
            if not page:
                break
            states = await self._store.document_states(page)
            self.read_back += len(states)
            await self._stage([], list(states.values()), dense)
            count, after = count + len(page), page[-1]
        self.dense = dense
        await self._commit(head)
        self.indexed_per_catch_up.append(count)
        _log.info(
            "rag.index.rebuilt",
            documents=count,
            chunks=len(self.lexical),
            generation=head,
            seconds=round(time.perf_counter() - started, 3),
        )
        return Applied(head, [], count, rebuilt=True)

    async def _stage(self, replaced: Sequence[str], states: Sequence[DocumentState], dense: DenseIndex | None) -> None:
        """Stage the removal of ``replaced`` documents and the addition of ``states``' current chunks
        (the lexical index's until its commit; ``dense`` changes at once)."""
        states = await self._with_vectors(states)
        lexical = self.lexical

        def stage() -> None:
            if dense is not None and replaced:
                old = np.fromiter(lexical.keys_of(replaced), dtype=np.uint64)
                dense.apply(remove=old, add_keys=np.empty(0, np.uint64), add_vectors=_no_vectors(dense))
            for document_id in replaced:
                lexical.remove(document_id)
            for state in states:
                if state.record is None:
                    continue
                lexical.add(state.record, state.chunks)
                if dense is not None and state.chunks:
                    dense.apply(
                        remove=np.empty(0, np.uint64),
                        add_keys=np.fromiter((c.key for c in state.chunks), dtype=np.uint64),
                        add_vectors=np.stack([c.vector for c in state.chunks if c.vector is not None]),
                    )

        await asyncio.to_thread(stage)

    async def _commit(self, generation: int) -> None:
        await asyncio.to_thread(self.lexical.commit)
        self.generation = generation
        self._write_manifest()

    def _write_manifest(self) -> None:
        write_manifest(
            self._index_dir,
            Manifest(
                generation=self.generation,
                dense_model=self._dense_model.name if self._dense_model is not None else None,
                dense_generation=self._dense_saved if self.dense is not None else None,
            ),
        )

    async def save_dense(self) -> None:
        """Save the vector graph at the current generation (the lexical index saves itself per commit)."""
        async with self._lock:
            if self.dense is None or self._dense_saved == self.generation or self.generation < 0:
                return
            await asyncio.to_thread(save_dense, self._index_dir, self.dense)
            self._dense_saved = self.generation
            self._write_manifest()

    @property
    def dense_unsaved(self) -> bool:
        return self.dense is not None and self._dense_saved != self.generation

    async def close(self) -> None:
        await self.save_dense()
        await asyncio.to_thread(self.lexical.close)

    async def _with_vectors(self, states: Sequence[DocumentState]) -> list[DocumentState]:
        """Embed chunks no replica has embedded under this model yet (ingested with dense off, say)."""
        if self._dense_model is None or self._embed is None:
            return list(states)
        lacking = [c for s in states for c in s.chunks if c.vector is None]
        if not lacking:
            return list(states)
        texts = {c.content_hash: index_text(c.heading, c.text) for c in lacking}
        # Another replica may have embedded them since they were read.
        vectors = await self._store.stored_vectors(texts)
        missing = [h for h in texts if h not in vectors]
        if missing:
            _log.info("rag.index.embedding_stored_chunks", chunks=len(missing))
            embedded = await asyncio.to_thread(self._embed, [texts[h] for h in missing])
            fresh = dict(zip(missing, embedded, strict=True))
            await self._store.put_vectors(fresh)
            vectors.update(fresh)
        return [
            replace(
                s,
                chunks=tuple(
                    c if c.vector is not None else replace(c, vector=vectors[c.content_hash]) for c in s.chunks
                ),
            )
            for s in states
        ]


def _no_vectors(dense: DenseIndex) -> Vector:
    return np.zeros((0, dense.dimensions), dtype=np.float32)


def _pages(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), _PAGE):
        yield items[start : start + _PAGE]
