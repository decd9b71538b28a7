"""Documents and their chunks in SQLite, searched with SQLite's FTS5 BM25 ranking.

The embedded default for the RAG service: persistent, transactional (a document and its
chunks change together) and free of extra processes.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiosqlite

_SCHEMA = """
PRAGMA journal_mode = WAL;
CREATE TABLE IF NOT EXISTS documents (
  document_id TEXT PRIMARY KEY,
  text TEXT NOT NULL,
  metadata TEXT NOT NULL,
  content_type TEXT NOT NULL,
  content_hash TEXT NOT NULL,
  chunk_count INTEGER NOT NULL,
  update_time REAL NOT NULL
);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks USING fts5(
  text, document_id UNINDEXED, chunk_id UNINDEXED, start_offset UNINDEXED, end_offset UNINDEXED,
  tokenize = 'porter unicode61'
);
"""

_PARAGRAPH = re.compile(r"\n\s*\n")
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True, slots=True)
class StoredDocument:
    document_id: str
    text: str
    metadata: Mapping[str, str]
    content_type: str
    content_hash: str
    chunk_count: int
    update_time: float


@dataclass(frozen=True, slots=True)
class Chunk:
    chunk_id: str
    start: int
    end: int
    text: str


@dataclass(frozen=True, slots=True)
class Hit:
    document_id: str
    chunk_id: str
    start: int
    end: int
    text: str
    score: float
    metadata: Mapping[str, str] = field(default_factory=dict)


def chunk_text(document_id: str, text: str, *, max_chars: int = 800) -> list[Chunk]:
    """Split on blank lines, then pack paragraphs into chunks of at most ~max_chars."""
    chunks: list[Chunk] = []
    start: int | None = None
    end = 0
    pos = 0
    for match in [*_PARAGRAPH.finditer(text), None]:
        para_end = match.start() if match else len(text)
        if text[pos:para_end].strip():
            if start is not None and para_end - start > max_chars:
                chunks.append(Chunk(f"{document_id}#{len(chunks)}", start, end, text[start:end]))
                start = None
            if start is None:
                start = pos
            end = para_end
        pos = match.end() if match else len(text)
    if start is not None:
        chunks.append(Chunk(f"{document_id}#{len(chunks)}", start, end, text[start:end]))
    return chunks


def _fts_query(query: str) -> str:
    # Quote every term: user text must never be parsed as FTS5 query syntax.
    terms = _WORD.findall(query.lower())
    return " OR ".join(f'"{t}"' for t in terms)


class DocumentStore:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._db: aiosqlite.Connection | None = None

    async def open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self._path)
        await self._db.executescript(_SCHEMA)
        await self._db.commit()

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("DocumentStore is not open")
        return self._db

    async def upsert(
        self, document_id: str, text: str, metadata: Mapping[str, str], content_type: str
    ) -> tuple[str, StoredDocument]:
        """Insert or replace a document. Returns ("created" | "replaced" | "unchanged", document)."""
        content_hash = hashlib.sha256(text.encode()).hexdigest()
        meta_json = json.dumps(dict(sorted(metadata.items())))
        existing = await self.get(document_id)
        if (
            existing is not None
            and existing.content_hash == content_hash
            and dict(existing.metadata) == dict(metadata)
            and existing.content_type == content_type
        ):
            return "unchanged", existing
        chunks = chunk_text(document_id, text)
        now = time.time()
        db = self.db
        await db.execute("BEGIN IMMEDIATE")
        try:
            await db.execute("DELETE FROM chunks WHERE document_id = ?", (document_id,))
            await db.execute(
                "INSERT OR REPLACE INTO documents VALUES (?, ?, ?, ?, ?, ?, ?)",
                (document_id, text, meta_json, content_type, content_hash, len(chunks), now),
            )
            await db.executemany(
                "INSERT INTO chunks VALUES (?, ?, ?, ?, ?)",
                [(c.text, document_id, c.chunk_id, c.start, c.end) for c in chunks],
            )
            await db.commit()
        except BaseException:
            await db.rollback()
            raise
        doc = StoredDocument(document_id, text, dict(metadata), content_type, content_hash, len(chunks), now)
        return ("created" if existing is None else "replaced"), doc

    async def get(self, document_id: str) -> StoredDocument | None:
        async with self.db.execute(
            "SELECT document_id, text, metadata, content_type, content_hash, chunk_count, update_time "
            "FROM documents WHERE document_id = ?",
            (document_id,),
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        return StoredDocument(row[0], row[1], json.loads(row[2]), row[3], row[4], row[5], row[6])

    async def delete(self, document_id: str) -> bool:
        db = self.db
        await db.execute("BEGIN IMMEDIATE")
        try:
            await db.execute("DELETE FROM chunks WHERE document_id = ?", (document_id,))
            cur = await db.execute("DELETE FROM documents WHERE document_id = ?", (document_id,))
            await db.commit()
        except BaseException:
            await db.rollback()
            raise
        return cur.rowcount > 0

    async def search(self, query: str, *, top_k: int, metadata_filter: Mapping[str, str]) -> Sequence[Hit]:
        match = _fts_query(query)
        if not match:
            return []
        sql = (
            "SELECT c.document_id, c.chunk_id, c.start_offset, c.end_offset, c.text, bm25(chunks), d.metadata "
            "FROM chunks c JOIN documents d ON d.document_id = c.document_id WHERE chunks MATCH ?"
        )
        params: list[object] = [match]
        for key, value in sorted(metadata_filter.items()):
            sql += " AND json_extract(d.metadata, ?) = ?"
            params += [f'$."{key}"', value]
        sql += " ORDER BY bm25(chunks) LIMIT ?"
        params.append(top_k)
        async with self.db.execute(sql, params) as cur:
            rows = await cur.fetchall()
        # FTS5's bm25() is lower-is-better; negate so higher is more relevant, as the API says.
        return [Hit(r[0], r[1], r[2], r[3], r[4], -float(r[5]), json.loads(r[6])) for r in rows]
