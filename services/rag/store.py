"""Durable state of the knowledge base in SQLite: documents, their chunks, embeddings.

SQLite is the source of truth; the search indexes are derived from it and can always be
rebuilt. Texts are stored once per content hash (two documents with identical text share
one row) and embeddings once per chunk hash and model, so re-ingesting an edited document
only embeds the chunks that changed. Every committed change bumps ``generation``, which
tags index snapshots saved on disk.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiosqlite
import numpy as np
import numpy.typing as npt

_SCHEMA = """
PRAGMA journal_mode = WAL;
PRAGMA foreign_keys = ON;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS contents (content_hash TEXT PRIMARY KEY, text TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
  document_id TEXT PRIMARY KEY,
  content_type TEXT NOT NULL,
  metadata TEXT NOT NULL,
  content_hash TEXT NOT NULL REFERENCES contents(content_hash),
  update_time REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
  -- AUTOINCREMENT: a key is never reused, so it can name a vector in the dense index.
  chunk_key INTEGER PRIMARY KEY AUTOINCREMENT,
  document_id TEXT NOT NULL REFERENCES documents(document_id) ON DELETE CASCADE,
  ordinal INTEGER NOT NULL,
  start_offset INTEGER NOT NULL,
  end_offset INTEGER NOT NULL,
  heading TEXT NOT NULL,
  content_hash TEXT NOT NULL,
  tokens TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_by_document ON chunks(document_id);
CREATE INDEX IF NOT EXISTS chunks_by_hash ON chunks(content_hash);
CREATE TABLE IF NOT EXISTS embeddings (
  content_hash TEXT NOT NULL,
  model TEXT NOT NULL,
  vector BLOB NOT NULL,
  PRIMARY KEY (content_hash, model)
);
INSERT OR IGNORE INTO meta (key, value) VALUES ('generation', '0');
"""

Vector = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class DocumentRecord:
    document_id: str
    content_type: str
    metadata: Mapping[str, str]
    content_hash: str
    update_time: float
    chunk_count: int


@dataclass(frozen=True, slots=True)
class NewChunk:
    ordinal: int
    start: int
    end: int
    heading: str
    content_hash: str
    tokens: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ChunkRecord:
    key: int
    document_id: str
    ordinal: int
    start: int
    end: int
    heading: str
    text: str
    content_hash: str
    tokens: tuple[str, ...]
    vector: Vector | None


@dataclass(frozen=True, slots=True)
class DocumentWrite:
    """One document to add or replace, already chunked (and embedded, if dense is on)."""

    document_id: str
    content_type: str
    metadata: Mapping[str, str]
    text: str
    content_hash: str
    chunks: Sequence[NewChunk]
    # Embeddings by chunk content hash, for hashes the store may not have yet.
    vectors: Mapping[str, Vector]


class Store:
    def __init__(self, connection: aiosqlite.Connection, model: str | None) -> None:
        self._db = connection
        self._model = model

    @classmethod
    async def open(cls, path: Path, *, model: str | None) -> Store:
        """Open (creating if needed) the database; ``model`` names the embeddings to read and write."""
        path.parent.mkdir(parents=True, exist_ok=True)
        connection = await aiosqlite.connect(path)
        await connection.executescript(_SCHEMA)
        await connection.commit()
        return cls(connection, model)

    async def close(self) -> None:
        await self._db.close()

    async def generation(self) -> int:
        async with self._db.execute("SELECT value FROM meta WHERE key = 'generation'") as cursor:
            row = await cursor.fetchone()
        assert row is not None
        return int(row[0])

    async def load_all(self) -> tuple[int, list[DocumentRecord], list[ChunkRecord]]:
        """Every document and chunk (chunks in key order), with vectors where stored."""
        generation = await self.generation()
        documents: list[DocumentRecord] = []
        texts: dict[str, str] = {}
        query = """
            SELECT d.document_id, d.content_type, d.metadata, d.content_hash, d.update_time, c.text,
                   (SELECT COUNT(*) FROM chunks k WHERE k.document_id = d.document_id)
            FROM documents d JOIN contents c USING (content_hash)
        """
        async with self._db.execute(query) as cursor:
            async for row in cursor:
                documents.append(DocumentRecord(row[0], row[1], json.loads(row[2]), row[3], row[4], row[6]))
                texts[row[0]] = row[5]
        chunks: list[ChunkRecord] = []
        query = """
            SELECT k.chunk_key, k.document_id, k.ordinal, k.start_offset, k.end_offset, k.heading,
                   k.content_hash, k.tokens, e.vector
            FROM chunks k LEFT JOIN embeddings e ON e.content_hash = k.content_hash AND e.model = ?
            ORDER BY k.chunk_key
        """
        async with self._db.execute(query, (self._model or "",)) as cursor:
            async for row in cursor:
                text = texts[row[1]]
                chunks.append(
                    ChunkRecord(
                        key=row[0],
                        document_id=row[1],
                        ordinal=row[2],
                        start=row[3],
                        end=row[4],
                        heading=row[5],
                        text=text[row[3] : row[4]],
                        content_hash=row[6],
                        tokens=tuple(row[7].split()),
                        vector=None if row[8] is None else np.frombuffer(row[8], dtype=np.float32),
                    )
                )
        return generation, documents, chunks

    async def document_text(self, document_id: str) -> str | None:
        query = "SELECT c.text FROM documents d JOIN contents c USING (content_hash) WHERE d.document_id = ?"
        async with self._db.execute(query, (document_id,)) as cursor:
            row = await cursor.fetchone()
        return None if row is None else str(row[0])

    async def stored_vectors(self, content_hashes: Iterable[str]) -> dict[str, Vector]:
        """Embeddings already stored for these chunk hashes (under this store's model)."""
        if self._model is None:
            return {}
        hashes = list(set(content_hashes))
        found: dict[str, Vector] = {}
        for start in range(0, len(hashes), 500):
            batch = hashes[start : start + 500]
            marks = ",".join("?" * len(batch))
            query = f"SELECT content_hash, vector FROM embeddings WHERE model = ? AND content_hash IN ({marks})"
            async with self._db.execute(query, (self._model, *batch)) as cursor:
                async for row in cursor:
                    found[row[0]] = np.frombuffer(row[1], dtype=np.float32)
        return found

    async def put_vectors(self, vectors: Mapping[str, Vector]) -> None:
        if self._model is None or not vectors:
            return
        await self._db.executemany(
            "INSERT OR IGNORE INTO embeddings (content_hash, model, vector) VALUES (?, ?, ?)",
            [(h, self._model, v.astype(np.float32).tobytes()) for h, v in vectors.items()],
        )
        await self._db.commit()

    async def apply(
        self, writes: Sequence[DocumentWrite], deletes: Sequence[str] = (), *, update_time: float
    ) -> tuple[int, dict[str, list[int]]]:
        """Commit writes and deletes in one transaction.

        Returns the new generation and, per written document, the keys of its new chunks
        in ordinal order.
        """
        keys: dict[str, list[int]] = {}
        now = update_time
        db = self._db
        try:
            for document_id in deletes:
                await db.execute("DELETE FROM documents WHERE document_id = ?", (document_id,))
            for write in writes:
                await db.execute("DELETE FROM chunks WHERE document_id = ?", (write.document_id,))
                await db.execute(
                    "INSERT OR IGNORE INTO contents (content_hash, text) VALUES (?, ?)",
                    (write.content_hash, write.text),
                )
                await db.execute(
                    """INSERT INTO documents (document_id, content_type, metadata, content_hash, update_time)
                       VALUES (?, ?, ?, ?, ?)
                       ON CONFLICT (document_id) DO UPDATE SET content_type = excluded.content_type,
                         metadata = excluded.metadata, content_hash = excluded.content_hash,
                         update_time = excluded.update_time""",
                    (
                        write.document_id,
                        write.content_type,
                        json.dumps(dict(write.metadata), sort_keys=True),
                        write.content_hash,
                        now,
                    ),
                )
                written: list[int] = []
                for chunk in write.chunks:
                    cursor = await db.execute(
                        """INSERT INTO chunks (document_id, ordinal, start_offset, end_offset, heading,
                                               content_hash, tokens) VALUES (?, ?, ?, ?, ?, ?, ?)""",
                        (
                            write.document_id,
                            chunk.ordinal,
                            chunk.start,
                            chunk.end,
                            chunk.heading,
                            chunk.content_hash,
                            " ".join(chunk.tokens),
                        ),
                    )
                    assert cursor.lastrowid is not None
                    written.append(cursor.lastrowid)
                keys[write.document_id] = written
                if self._model is not None and write.vectors:
                    await db.executemany(
                        "INSERT OR IGNORE INTO embeddings (content_hash, model, vector) VALUES (?, ?, ?)",
                        [(h, self._model, v.astype(np.float32).tobytes()) for h, v in write.vectors.items()],
                    )
            # Texts and embeddings no chunk or document refers to any more.
            await db.execute("DELETE FROM contents WHERE content_hash NOT IN (SELECT content_hash FROM documents)")
            await db.execute("DELETE FROM embeddings WHERE content_hash NOT IN (SELECT content_hash FROM chunks)")
            await db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
            await db.commit()
        except BaseException:
            await db.rollback()
            raise
        return await self.generation(), keys
