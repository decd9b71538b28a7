"""The RAG store, on the embedded SQLite default and on PostgreSQL (each test runs on both)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest

from runtime.database import Database, open_database, wait_until_reachable
from services.rag.store import GENERATION_CHANNEL, DocumentWrite, NewChunk, NothingToWrite, Store

Opener = Callable[..., Awaitable[Store]]


def write(document_id: str, text: str, *, model_vector: bool = True) -> DocumentWrite:
    digest = hashlib.sha256(text.encode()).hexdigest()
    chunk = NewChunk(ordinal=0, start=0, end=len(text), heading="", content_hash=digest, tokens=tuple(text.split()))
    vectors = {digest: np.ones(4, dtype=np.float32)} if model_vector else {}
    return DocumentWrite(document_id, "text/plain", {}, text, digest, [chunk], vectors)


async def count(store: Store, table: str) -> int:
    row = await store.db.fetch_one(f"SELECT COUNT(*) FROM rag_{table}")
    assert row is not None
    return int(row[0])


@pytest.fixture
async def open_store(database_url: str, tmp_path: Path) -> AsyncIterator[Opener]:
    """Opens stores on one database: a new connection (pool) each time, as another replica would."""
    opened: list[Database] = []

    async def open_one(*, model: str | None = "m") -> Store:
        db = await open_database(
            database_url, sqlite_path=tmp_path / "rag.sqlite3", setting="AGENTMESH_RAG_DATABASE_URL"
        )
        opened.append(db)
        await wait_until_reachable(db)
        return await Store.open(db, model=model)

    yield open_one
    for db in opened:
        await db.close()


async def test_identical_text_is_stored_once_and_kept_while_any_document_uses_it(open_store: Opener) -> None:
    store = await open_store()
    await store.apply([write("a", "same text"), write("b", "same text")])
    assert (await count(store, "contents"), await count(store, "embeddings"), await count(store, "chunks")) == (1, 1, 2)
    await store.apply([], deletes=["a"])
    assert (await count(store, "contents"), await count(store, "embeddings")) == (1, 1)
    await store.apply([], deletes=["b"])
    assert (await count(store, "contents"), await count(store, "embeddings"), await count(store, "chunks")) == (0, 0, 0)


async def test_replacing_a_document_drops_its_old_text_and_embeddings(open_store: Opener) -> None:
    store = await open_store()
    first = await store.apply([write("a", "old text")])
    second = await store.apply([write("a", "new text")])
    assert (first.outcomes["a"][0], second.outcomes["a"][0]) == ("created", "replaced")
    assert second.generation == first.generation + 1 == await store.generation()
    assert (await count(store, "contents"), await count(store, "embeddings"), await count(store, "chunks")) == (1, 1, 1)
    assert await store.document_ids(after="", limit=10) == ["a"]
    [state] = (await store.document_states(["a"])).values()
    assert state.record is not None and state.record.content_hash == hashlib.sha256(b"new text").hexdigest()
    assert [c.text for c in state.chunks] == ["new text"]
    assert state.chunks[0].vector is not None
    assert np.array_equal(state.chunks[0].vector, np.ones(4, dtype=np.float32))


async def test_writing_a_stored_version_again_commits_nothing(open_store: Opener) -> None:
    store = await open_store()
    committed = await store.apply([write("a", "text")])
    with pytest.raises(NothingToWrite):
        await store.apply([write("a", "text")])
    assert await store.generation() == committed.generation


async def test_a_failed_transaction_leaves_nothing_behind(open_store: Opener) -> None:
    store = await open_store(model=None)
    await store.apply([write("a", "kept")])
    # Metadata that cannot be serialised fails the second write, after the first one ran.
    broken = dataclasses.replace(write("b", "never stored"), metadata={"k": object()})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        await store.apply([write("c", "also not stored"), broken])
    assert await store.generation() == 1
    assert await store.document_ids(after="", limit=10) == ["a"]


async def test_deleting_a_document_that_does_not_exist_commits_nothing(open_store: Opener) -> None:
    store = await open_store()
    with pytest.raises(KeyError):
        await store.apply([], deletes=["ghost"])
    assert await store.generation() == 0


async def test_each_commit_is_one_generation_and_the_change_log_names_its_documents(open_store: Opener) -> None:
    store = await open_store()
    await store.apply([write("a", "one"), write("b", "two")])
    await store.apply([], deletes=["a"])
    changes = await store.changes(after=0, up_to=await store.generation())
    assert [(c.generation, c.document_id) for c in changes] == [(1, "a"), (1, "b"), (2, "a")]
    states = await store.document_states(["a", "b"])
    assert states["a"].record is None and states["a"].chunks == ()
    b = states["b"].record
    assert b is not None and b.chunk_count == 1 and [c.text for c in states["b"].chunks] == ["two"]


async def test_the_change_log_keeps_the_last_generations_it_retains(
    open_store: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("services.rag.store.CHANGES_RETAINED", 2)
    store = await open_store()
    for i in range(4):
        await store.apply([write(f"d{i}", f"text {i}")])
    changes = await store.changes(after=0, up_to=4)
    assert [(c.generation, c.document_id) for c in changes] == [(3, "d2"), (4, "d3")]


def chunked(document_id: str, text: str, metadata: dict[str, str]) -> DocumentWrite:
    """A document cut into its words, one chunk each (a vector for every other one)."""
    chunks, vectors, start = [], {}, 0
    for ordinal, word in enumerate(text.split()):
        start = text.index(word, start)
        digest = hashlib.sha256(f"{document_id}/{word}".encode()).hexdigest()
        chunks.append(NewChunk(ordinal, start, start + len(word), f"h{ordinal}", digest, (word.lower(),)))
        if ordinal % 2 == 0:
            vectors[digest] = np.full(4, ordinal, dtype=np.float32)
        start += len(word)
    return DocumentWrite(
        document_id, "text/markdown", metadata, text, hashlib.sha256(text.encode()).hexdigest(), chunks, vectors
    )


@pytest.mark.parametrize("model", ["m", None])
async def test_a_commit_returns_the_states_reading_them_back_finds(open_store: Opener, model: str | None) -> None:
    # The committing replica indexes its own generation from these, without reading it back.
    store = await open_store(model=model)
    await store.apply([write("gone", "to be deleted"), chunked("kept", "one two", {"b": "2"})])
    committed = await store.apply(
        [chunked("ünï", "naïve café — déjà vu", {"z": "1", "a": "ü"}), chunked("kept", "one two three", {"b": "3"})],
        deletes=["gone"],
    )
    read_back = await store.document_states(["ünï", "kept", "gone"])
    assert committed.states.keys() == read_back.keys()
    for document_id, state in committed.states.items():
        expected = read_back[document_id]
        assert state.record == expected.record
        if state.record is not None and expected.record is not None:  # in the same order, too
            assert list(state.record.metadata.items()) == list(expected.record.metadata.items())
        assert [dataclasses.replace(c, vector=None) for c in state.chunks] == [
            dataclasses.replace(c, vector=None) for c in expected.chunks
        ]
        for mine, theirs in zip(state.chunks, expected.chunks, strict=True):
            assert (mine.vector is None) == (theirs.vector is None)
            assert mine.vector is None or theirs.vector is None or np.array_equal(mine.vector, theirs.vector)
    assert read_back["gone"].record is None
    assert [c.text for c in read_back["ünï"].chunks] == ["naïve", "café", "—", "déjà", "vu"]


async def test_two_replicas_writing_the_same_document_at_once_make_one_document(open_store: Opener) -> None:
    replica_1, replica_2 = await open_store(), await open_store()
    same = [write(f"doc-{i}", f"the same text {i}") for i in range(5)]
    results = await asyncio.gather(
        *(r.apply(same) for r in (replica_1, replica_2) for _ in range(3)), return_exceptions=True
    )
    committed = [r for r in results if not isinstance(r, BaseException)]
    assert all(isinstance(r, NothingToWrite) for r in results if isinstance(r, BaseException))
    # Exactly one commit created them; every other one found them stored.
    assert len(committed) == 1
    assert {outcome for outcome, _ in committed[0].outcomes.values()} == {"created"}
    assert (await count(replica_1, "documents"), await count(replica_1, "contents")) == (5, 5)
    assert (await count(replica_1, "chunks"), await count(replica_1, "embeddings")) == (5, 5)


async def test_a_listener_on_another_connection_is_woken_by_a_commit(open_store: Opener, database_url: str) -> None:
    if not database_url:
        pytest.skip("SQLite has one process per file: there is no other replica to notify")
    writer, follower = await open_store(), await open_store()
    woken = asyncio.Event()
    await follower.db.listen(GENERATION_CHANNEL, woken.set)
    # The listener calls back once when it has (re)connected; wait for that, then for the commit.
    await asyncio.wait_for(woken.wait(), 10)
    woken.clear()
    await writer.apply([write("a", "wake up")])
    await asyncio.wait_for(woken.wait(), 10)


async def test_a_file_written_before_versioned_migrations_is_migrated_with_its_data(tmp_path: Path) -> None:
    path = tmp_path / "rag.sqlite3"
    legacy = sqlite3.connect(path)
    legacy.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE contents (content_hash TEXT PRIMARY KEY, text TEXT NOT NULL);
        CREATE TABLE documents (document_id TEXT PRIMARY KEY, content_type TEXT NOT NULL, metadata TEXT NOT NULL,
          content_hash TEXT NOT NULL REFERENCES contents(content_hash), update_time REAL NOT NULL);
        CREATE TABLE chunks (chunk_key INTEGER PRIMARY KEY AUTOINCREMENT,
          document_id TEXT NOT NULL REFERENCES documents(document_id) ON DELETE CASCADE, ordinal INTEGER NOT NULL,
          start_offset INTEGER NOT NULL, end_offset INTEGER NOT NULL, heading TEXT NOT NULL,
          content_hash TEXT NOT NULL, tokens TEXT NOT NULL);
        CREATE TABLE embeddings (content_hash TEXT NOT NULL, model TEXT NOT NULL, vector BLOB NOT NULL,
          PRIMARY KEY (content_hash, model));
        INSERT INTO meta VALUES ('generation', '7');
        INSERT INTO contents VALUES ('h', 'an old document');
        INSERT INTO documents VALUES ('old', 'text/plain', '{}', 'h', 1.0);
        INSERT INTO chunks (document_id, ordinal, start_offset, end_offset, heading, content_hash, tokens)
          VALUES ('old', 0, 0, 15, '', 'c', 'old document');
        """
    )
    legacy.close()
    db = await open_database("", sqlite_path=path, setting="AGENTMESH_RAG_DATABASE_URL")
    try:
        store = await Store.open(db, model=None)
        assert await store.generation() == 7
        assert await store.document_ids(after="", limit=10) == ["old"]
        [state] = (await store.document_states(["old"])).values()
        assert [(c.document_id, c.text) for c in state.chunks] == [("old", "an old document")]
        committed = await store.apply([write("new", "a new document")])
        assert committed.generation == 8
    finally:
        await db.close()
