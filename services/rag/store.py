"""Durable state of the knowledge base in SQLite: documents, their chunks, embeddings.

SQLite is the source of truth; the search indexes are derived from it and can always be
rebuilt. Texts are stored once per content hash (two documents with identical text share
one row) and embeddings once per chunk hash and model, so re-ingesting an edited document
only embeds the chunks that changed. Every committed change bumps ``generation``, which
tags index snapshots saved on disk.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

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
CREATE INDEX IF NOT EXISTS documents_by_hash ON documents(content_hash);
CREATE TABLE IF NOT EXISTS embeddings (
  content_hash TEXT NOT NULL,
  model TEXT NOT NULL,
  vector BLOB NOT NULL,
  PRIMARY KEY (content_hash, model)
);
INSERT OR IGNORE INTO meta (key, value) VALUES ('generation', '0');
"""

Vector = npt.NDArray[np.float32]
_T = TypeVar("_T")


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
    """SQLite in WAL mode: one writer connection, one reader that only ever sees committed data.

    Each method runs as one call in a worker thread (sqlite3 blocks), so a whole transaction
    is one hop off the event loop and always runs to its commit or rollback.
    """

    def __init__(self, writer: sqlite3.Connection, reader: sqlite3.Connection, model: str | None) -> None:
        self._writer = writer
        self._reader = reader
        self._model = model
        # sqlite3 connections must not be used by two threads at once.
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()

    @classmethod
    async def open(cls, path: Path, *, model: str | None) -> Store:
        """Open (creating if needed) the database; ``model`` names the embeddings to read and write."""

        def connect() -> Store:
            path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT).
            writer = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            writer.executescript(_SCHEMA)
            reader = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            return cls(writer, reader, model)

        return await asyncio.to_thread(connect)

    async def close(self) -> None:
        def close() -> None:
            with self._write_lock, self._read_lock:
                self._reader.close()
                self._writer.close()

        await asyncio.to_thread(close)

    async def load_all(self) -> tuple[int, list[DocumentRecord], list[ChunkRecord]]:
        """Every document and chunk (chunks in key order), with vectors where stored."""
        return await asyncio.to_thread(self._read, self._load_all)

    async def get_document(self, document_id: str) -> tuple[DocumentRecord, str] | None:
        """A committed document and its text, read together (never half of a replace)."""

        def query(db: sqlite3.Connection) -> tuple[DocumentRecord, str] | None:
            row = db.execute(
                """SELECT d.document_id, d.content_type, d.metadata, d.content_hash, d.update_time, c.text,
                          (SELECT COUNT(*) FROM chunks k WHERE k.document_id = d.document_id)
                   FROM documents d JOIN contents c USING (content_hash) WHERE d.document_id = ?""",
                (document_id,),
            ).fetchone()
            if row is None:
                return None
            return DocumentRecord(row[0], row[1], json.loads(row[2]), row[3], row[4], row[6]), str(row[5])

        return await asyncio.to_thread(self._read, query)

    async def stored_vectors(self, content_hashes: Iterable[str]) -> dict[str, Vector]:
        """Embeddings already stored for these chunk hashes (under this store's model)."""
        model = self._model
        if model is None:
            return {}
        hashes = list(set(content_hashes))

        def query(db: sqlite3.Connection) -> dict[str, Vector]:
            found: dict[str, Vector] = {}
            for batch in _batches(hashes):
                marks = ",".join("?" * len(batch))
                rows = db.execute(
                    f"SELECT content_hash, vector FROM embeddings WHERE model = ? AND content_hash IN ({marks})",
                    (model, *batch),
                )
                found.update((h, np.frombuffer(v, dtype=np.float32)) for h, v in rows)
            return found

        return await asyncio.to_thread(self._read, query)

    async def put_vectors(self, vectors: Mapping[str, Vector]) -> None:
        model = self._model
        if model is None or not vectors:
            return

        def insert(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT OR IGNORE INTO embeddings (content_hash, model, vector) VALUES (?, ?, ?)",
                [(h, model, np.asarray(v, dtype=np.float32).tobytes()) for h, v in vectors.items()],
            )

        await asyncio.to_thread(self._transaction, insert)

    async def apply(
        self, writes: Sequence[DocumentWrite], deletes: Sequence[str] = (), *, update_time: float
    ) -> tuple[int, dict[str, list[int]]]:
        """Commit writes and deletes in one transaction.

        Returns the new generation and, per written document, the keys of its new chunks
        in ordinal order.
        """
        return await asyncio.to_thread(self._transaction, lambda db: self._apply(db, writes, deletes, update_time))

    # --- in worker threads ------------------------------------------------------------------

    def _read(self, query: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._read_lock:
            return query(self._reader)

    def _transaction(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._write_lock:
            db = self._writer
            db.execute("BEGIN IMMEDIATE")
            try:
                result = work(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result

    def _apply(
        self, db: sqlite3.Connection, writes: Sequence[DocumentWrite], deletes: Sequence[str], update_time: float
    ) -> tuple[int, dict[str, list[int]]]:
        touched = [*deletes, *(write.document_id for write in writes)]
        # Texts and embeddings that may lose their last reference here; checked again at the end.
        old_texts: set[str] = set()
        old_chunks: set[str] = set()
        for batch in _batches(touched):
            marks = ",".join("?" * len(batch))
            old_texts.update(
                h for (h,) in db.execute(f"SELECT content_hash FROM documents WHERE document_id IN ({marks})", batch)
            )
            old_chunks.update(
                h for (h,) in db.execute(f"SELECT content_hash FROM chunks WHERE document_id IN ({marks})", batch)
            )
        db.executemany("DELETE FROM documents WHERE document_id = ?", [(d,) for d in deletes])
        keys: dict[str, list[int]] = {}
        for write in writes:
            db.execute("DELETE FROM chunks WHERE document_id = ?", (write.document_id,))
            db.execute(
                "INSERT OR IGNORE INTO contents (content_hash, text) VALUES (?, ?)", (write.content_hash, write.text)
            )
            db.execute(
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
                    update_time,
                ),
            )
            written: list[int] = []
            for chunk in write.chunks:
                cursor = db.execute(
                    """INSERT INTO chunks
                         (document_id, ordinal, start_offset, end_offset, heading, content_hash, tokens)
                       VALUES (?, ?, ?, ?, ?, ?, ?)""",
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
                db.executemany(
                    "INSERT OR IGNORE INTO embeddings (content_hash, model, vector) VALUES (?, ?, ?)",
                    [(h, self._model, np.asarray(v, dtype=np.float32).tobytes()) for h, v in write.vectors.items()],
                )
        db.executemany(
            "DELETE FROM contents WHERE content_hash = ?"
            " AND NOT EXISTS (SELECT 1 FROM documents d WHERE d.content_hash = contents.content_hash)",
            [(h,) for h in old_texts],
        )
        db.executemany(
            "DELETE FROM embeddings WHERE content_hash = ?"
            " AND NOT EXISTS (SELECT 1 FROM chunks k WHERE k.content_hash = embeddings.content_hash)",
            [(h,) for h in old_chunks],
        )
        db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
        (generation,) = db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return int(generation), keys

    def _load_all(self, db: sqlite3.Connection) -> tuple[int, list[DocumentRecord], list[ChunkRecord]]:
        # One read transaction, so documents and chunks come from the same commit.
        db.execute("BEGIN")
        try:
            (generation,) = db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
            documents: list[DocumentRecord] = []
            texts: dict[str, str] = {}
            rows = db.execute(
                """SELECT d.document_id, d.content_type, d.metadata, d.content_hash, d.update_time, c.text,
                          (SELECT COUNT(*) FROM chunks k WHERE k.document_id = d.document_id)
                   FROM documents d JOIN contents c USING (content_hash)"""
            )
            for row in rows:
                documents.append(DocumentRecord(row[0], row[1], json.loads(row[2]), row[3], row[4], row[6]))
                texts[row[0]] = row[5]
            chunks: list[ChunkRecord] = []
            rows = db.execute(
                """SELECT k.chunk_key, k.document_id, k.ordinal, k.start_offset, k.end_offset, k.heading,
                          k.content_hash, k.tokens, e.vector
                   FROM chunks k LEFT JOIN embeddings e ON e.content_hash = k.content_hash AND e.model = ?
                   ORDER BY k.chunk_key""",
                (self._model or "",),
            )
            for row in rows:
                chunks.append(
                    ChunkRecord(
                        key=row[0],
                        document_id=row[1],
                        ordinal=row[2],
                        start=row[3],
                        end=row[4],
                        heading=row[5],
                        text=texts[row[1]][row[3] : row[4]],
                        content_hash=row[6],
                        tokens=tuple(row[7].split()),
                        vector=None if row[8] is None else np.frombuffer(row[8], dtype=np.float32),
                    )
                )
        finally:
            db.execute("COMMIT")
        return int(generation), documents, chunks


def _batches(items: Sequence[str], size: int = 500) -> Iterator[Sequence[str]]:
    """Slices small enough for SQLite's limit on bound parameters."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
