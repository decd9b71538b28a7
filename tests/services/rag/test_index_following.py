"""A replica's indexes follow the store change by change, live on disk, and survive restarts.

Each test runs on the embedded SQLite default (replicas sharing one file) and on PostgreSQL
(replicas sharing one database), each replica with its own index directory.
"""

from __future__ import annotations

import asyncio
import gc
import types
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from runtime.database import Database, open_database
from runtime.database.postgres import PostgresDatabase
from runtime.database.sqlite import SQLiteDatabase
from services.rag.chunking import ChunkingOptions
from services.rag.knowledge_base import DocumentInput, KnowledgeBase
from tests.services.rag.conftest import HashingEmbedder

Replica = Callable[..., Awaitable[KnowledgeBase]]


def documents(start: int, count: int, *, topic: str = "quota") -> list[DocumentInput]:
    return [
        DocumentInput(f"doc-{i:05d}", f"Document {i} explains the {topic} of team {i % 7}.", {"team": str(i % 7)})
        for i in range(start, start + count)
    ]


@pytest.fixture
async def replica(database_url: str, tmp_path: Path) -> AsyncIterator[Replica]:
    """Opens knowledge bases on one shared database, each in its own data dir; closes them all."""
    opened: list[KnowledgeBase] = []
    databases: list[Database] = []

    async def open_replica(name: str, **options: Any) -> KnowledgeBase:
        database = await open_database(
            database_url, sqlite_path=tmp_path / "shared.sqlite3", setting="AGENTMESH_RAG_DATABASE_URL"
        )
        databases.append(database)
        kb = await KnowledgeBase.open(
            tmp_path / name, database=database, chunking=ChunkingOptions(size=200, overlap=40), **options
        )
        opened.append(kb)
        return kb

    yield open_replica
    for kb in opened:
        await kb.close()
    for database in databases:
        await database.close()


async def test_a_change_reindexes_only_the_documents_it_touched_whatever_the_corpus(replica: Replica) -> None:
    writer, follower = await replica("writer"), await replica("follower")
    for start in range(0, 200, 50):
        await writer.ingest(documents(start, 50), wait_searchable=False)
        await writer.settle()
    small = await replica("late")  # a replica that starts on the 200 documents
    costs: list[tuple[int, int]] = []
    for kb in (writer, follower, small):
        await kb.catch_up()
    for corpus in (200, 400):
        if corpus == 400:
            for start in range(200, 400, 50):
                await writer.ingest(documents(start, 50))
            await follower.catch_up()
        await writer.ingest(documents(10_000 + corpus, 3, topic="rollout"))
        await follower.catch_up()
        costs.append((writer.indexes.indexed_per_catch_up[-1], follower.indexes.indexed_per_catch_up[-1]))
    # Three documents changed, three documents indexed, at 200 documents and at 400, on the
    # replica that wrote them and on the one that followed.
    assert costs == [(3, 3), (3, 3)]
    await writer.delete("doc-00001")
    await follower.catch_up()
    assert follower.indexes.indexed_per_catch_up[-1] == 1
    assert "doc-00001" not in {h.chunk.document_id for h in await follower.search("document 1 quota", top_k=20)}
    await small.catch_up()
    assert len(small.snapshot.chunks) == len(writer.snapshot.chunks) == 405


async def test_a_replica_indexes_its_own_commits_from_what_it_wrote_and_still_follows_the_others(
    replica: Replica,
) -> None:
    writer, other = await replica("writer"), await replica("other")
    following = writer.follower(poll_s=0.2).start()

    async def writer_finds(topic: str, count: int) -> None:
        # Polled: what it waits for is the follower's doing, which signals nothing.
        while len(await writer.search(topic, top_k=20)) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.02)

    try:
        await other.ingest(documents(1000, 5, topic="rollout"))
        await asyncio.wait_for(writer_finds("rollout", 5), 10)
        read_back = writer.indexes.read_back
        for start in range(0, 100, 20):
            await writer.ingest(documents(start, 20))
        # Its follower, woken by each of these commits, stood aside: nothing was read back.
        assert writer.indexes.read_back == read_back
        # Commits of another replica landing while this one's are under way are followed all the same.
        await asyncio.gather(
            other.ingest(documents(2000, 7, topic="canary")),
            *(writer.ingest(documents(start, 20, topic="budget")) for start in range(0, 100, 20)),
        )
        await asyncio.wait_for(writer_finds("canary", 7), 10)
    finally:
        await following.stop()


async def test_start_up_opens_the_saved_indexes_and_applies_only_the_changes_since(replica: Replica) -> None:
    writer = await replica("writer")
    await writer.ingest(documents(0, 30))
    restarted = await replica("restarted")
    await restarted.close()
    # While "restarted" is down, another replica changes three documents.
    await writer.ingest(documents(100, 2, topic="rollout"))
    await writer.delete("doc-00000")

    reopened = await replica("restarted")
    assert reopened.snapshot.restored, "the saved indexes are opened, not built from the store"
    assert reopened.indexes.indexed_per_catch_up == [3]
    assert reopened.generation == writer.generation
    hits = await reopened.search("rollout", top_k=5)
    assert sorted(h.chunk.document_id for h in hits) == ["doc-00100", "doc-00101"]
    assert len(reopened.snapshot.chunks) == 31


async def test_a_corrupt_or_missing_index_is_rebuilt_from_the_store(replica: Replica, tmp_path: Path) -> None:
    writer = await replica("writer")
    await writer.ingest(documents(0, 12))
    await writer.close()
    for path in (tmp_path / "writer" / "index" / "lexical").iterdir():
        if path.name == "meta.json":
            path.write_text("{not json")

    rebuilt = await replica("writer")
    assert not rebuilt.snapshot.restored
    assert rebuilt.indexes.indexed_per_catch_up == [12]
    assert len(await rebuilt.search("quota", top_k=20)) == 12
    await rebuilt.close()

    (tmp_path / "writer" / "index" / "manifest.json").unlink()
    again = await replica("writer")
    assert not again.snapshot.restored and len(again.snapshot.chunks) == 12


async def test_hits_are_read_from_the_index_on_disk_and_no_chunk_text_is_held_in_memory(replica: Replica) -> None:
    kb = await replica("kb", embedder=HashingEmbedder())
    marker = "Zyxquuxian"
    await kb.ingest([DocumentInput("marked", f"The {marker} procedure rotates every signing key.", {"kind": "faq"})])
    await kb.ingest(documents(0, 20))
    [hit] = await kb.search(marker, top_k=1, metadata_filter={"kind": "faq"})
    stored = await kb.get("marked")
    assert hit.chunk.text == stored.text[hit.chunk.start : hit.chunk.end]
    del hit, stored
    assert not _reachable_strings_containing(kb, marker), "chunk text is held by the knowledge base"


_NOT_STATE = (
    type,
    types.ModuleType,
    types.FunctionType,
    types.CodeType,
    types.FrameType,
    types.CoroutineType,
    asyncio.AbstractEventLoop,
    PostgresDatabase,
    SQLiteDatabase,
)


def _reachable_strings_containing(root: object, needle: str) -> list[str]:
    found: list[str] = []
    seen: set[int] = set()
    stack: list[object] = [root]
    while stack:
        item = stack.pop()
        # What the knowledge base holds, not code, modules or running coroutines (the test's own
        # frame holds the marker), nor the database driver's buffers (the last rows it read).
        if id(item) in seen or isinstance(item, _NOT_STATE):
            continue
        seen.add(id(item))
        if isinstance(item, str):
            if needle in item:
                found.append(item)
            continue
        if isinstance(item, bytes | bytearray):
            if needle.encode() in item:
                found.append(repr(item[:80]))
            continue
        stack.extend(gc.get_referents(item))
    return found
