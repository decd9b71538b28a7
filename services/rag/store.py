"""Durable state of the knowledge base: documents, their chunks and embeddings, in the shared database.

The database (embedded SQLite by default, PostgreSQL with ``AGENTMESH_RAG_DATABASE_URL``, both
through ``runtime.database``) is the source of truth; every replica's search indexes are derived
from it. Texts are stored once per content hash and embeddings once per chunk hash and model
(primary keys, written with ``ON CONFLICT DO NOTHING``), so identical text ingested twice, by one
replica or two at once, is one row, and a chunk embedded once is never embedded again by anyone.

Every committed change bumps ``generation`` (row ``rag_meta.generation``) first thing in its
transaction, which both orders commits (the row lock serializes writers across replicas, so
generations commit in order) and records, per generation, which documents it touched
(``rag_changes``). A replica that has applied generation ``g`` catches up by reading the changes
after ``g`` and the current state of just those documents; one that fell behind the retained
change log reloads everything. Commits notify channel ``rag_generation`` (LISTEN/NOTIFY on
PostgreSQL), so followers wake at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from runtime.database import Database, Migration, Row, Schema, Transaction, in_list
from runtime.database.interface import Dialect

GENERATION_CHANNEL = "rag_generation"
# Generations whose change rows are kept: a replica further behind reloads the whole store.
CHANGES_RETAINED = 10_000

# Version 1 on SQLite is exactly the schema of the files written before versioned migrations
# (CREATE ... IF NOT EXISTS is a no-op on those), renamed into the ``rag_`` namespace the
# shared PostgreSQL database needs, plus the change log followers read.
_V1_SQLITE = """
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
ALTER TABLE meta RENAME TO rag_meta;
ALTER TABLE contents RENAME TO rag_contents;
ALTER TABLE documents RENAME TO rag_documents;
ALTER TABLE chunks RENAME TO rag_chunks;
ALTER TABLE embeddings RENAME TO rag_embeddings;
CREATE UNIQUE INDEX rag_chunks_by_ordinal ON rag_chunks(document_id, ordinal);
CREATE TABLE rag_changes (
  generation INTEGER NOT NULL,
  document_id TEXT NOT NULL,
  committed_at REAL NOT NULL,
  PRIMARY KEY (generation, document_id)
);
"""

_V1_POSTGRESQL = """
CREATE TABLE rag_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO rag_meta (key, value) VALUES ('generation', '0');
CREATE TABLE rag_contents (content_hash TEXT PRIMARY KEY, text TEXT NOT NULL);
CREATE TABLE rag_documents (
  document_id TEXT PRIMARY KEY,
  content_type TEXT NOT NULL,
  metadata TEXT NOT NULL,
  content_hash TEXT NOT NULL REFERENCES rag_contents(content_hash),
  update_time DOUBLE PRECISION NOT NULL
);
CREATE TABLE rag_chunks (
  -- An identity is never reused, so a key can name a vector in every replica's dense index.
  chunk_key BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  document_id TEXT NOT NULL REFERENCES rag_documents(document_id) ON DELETE CASCADE,
  ordinal INTEGER NOT NULL,
  start_offset INTEGER NOT NULL,
  end_offset INTEGER NOT NULL,
  heading TEXT NOT NULL,
  content_hash TEXT NOT NULL,
  tokens TEXT NOT NULL,
  UNIQUE (document_id, ordinal)
);
CREATE INDEX rag_chunks_by_hash ON rag_chunks(content_hash);
CREATE INDEX rag_documents_by_hash ON rag_documents(content_hash);
CREATE TABLE rag_embeddings (
  content_hash TEXT NOT NULL,
  model TEXT NOT NULL,
  vector BYTEA NOT NULL,
  PRIMARY KEY (content_hash, model)
);
CREATE TABLE rag_changes (
  generation BIGINT NOT NULL,
  document_id TEXT NOT NULL,
  committed_at DOUBLE PRECISION NOT NULL,
  PRIMARY KEY (generation, document_id)
);
"""

SCHEMA = Schema(component="rag", migrations=(Migration(1, sqlite=_V1_SQLITE, postgresql=_V1_POSTGRESQL),))

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
class DocumentVersion:
    """What decides whether an ingest changes a stored document."""

    content_hash: str
    content_type: str
    metadata: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class StoredVersion:
    version: DocumentVersion
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

    @property
    def version(self) -> DocumentVersion:
        return DocumentVersion(self.content_hash, self.content_type, dict(self.metadata))


@dataclass(frozen=True, slots=True)
class Change:
    generation: int
    document_id: str
    committed_at: float


@dataclass(frozen=True, slots=True)
class DocumentState:
    """A document as committed, with its chunks (key order); ``record`` None once it is deleted."""

    document_id: str
    record: DocumentRecord | None
    chunks: tuple[ChunkRecord, ...]


class StaleVersion(Exception):
    """A document changed between the caller's read and its transaction; prepare it again."""

    def __init__(self, document_ids: Sequence[str]) -> None:
        super().__init__(f"changed concurrently: {', '.join(document_ids)}")
        self.document_ids = tuple(document_ids)


class NothingToWrite(Exception):
    """Every document of the transaction already holds the version written: it was rolled back."""


@dataclass(frozen=True, slots=True)
class Committed:
    generation: int
    # Per document written or found unchanged: "created", "replaced" or "unchanged", and its chunk count.
    outcomes: Mapping[str, tuple[str, int]]
    committed_at: float = 0.0
    # The committed state of every document this generation changed (``record`` None when
    # deleted), exactly as reading it back would find it: the committing replica indexes its own
    # generation from these without a round trip.
    states: Mapping[str, DocumentState] = field(default_factory=dict)


_STATE_COLUMNS = """
  d.document_id, d.content_type, d.metadata, d.content_hash, d.update_time,
  k.chunk_key, k.ordinal, k.start_offset, k.end_offset, k.heading, k.content_hash, k.tokens,
  substr(c.text, k.start_offset + 1, k.end_offset - k.start_offset), e.vector
"""
_STATE_FROM = """
FROM rag_documents d
JOIN rag_contents c ON c.content_hash = d.content_hash
LEFT JOIN rag_chunks k ON k.document_id = d.document_id
LEFT JOIN rag_embeddings e ON e.content_hash = k.content_hash AND e.model = :model
"""


class Store:
    """The knowledge base's tables on a ``runtime.database.Database`` (which owns the connections)."""

    def __init__(self, db: Database, *, model: str | None) -> None:
        self.db = db
        self._model = model

    @classmethod
    async def open(cls, db: Database, *, model: str | None) -> Store:
        """Migrate ``db`` to this build's schema (once, under the database's migration lock)."""
        await db.migrate(SCHEMA)
        return cls(db, model=model)

    # --- reads ----------------------------------------------------------------------------

    async def generation(self) -> int:
        """The last committed generation."""
        row = await self.db.fetch_one("SELECT value FROM rag_meta WHERE key = 'generation'")
        return 0 if row is None else int(row[0])

    async def changes(self, *, after: int, up_to: int) -> list[Change]:
        rows = await self.db.fetch_all(
            "SELECT generation, document_id, committed_at FROM rag_changes"
            " WHERE generation > :after AND generation <= :up_to ORDER BY generation",
            {"after": after, "up_to": up_to},
        )
        return [Change(int(r[0]), str(r[1]), float(r[2])) for r in rows]

    async def document_states(self, document_ids: Iterable[str]) -> dict[str, DocumentState]:
        """The committed state of each document (``record`` None for one that no longer exists)."""
        ids = sorted(set(document_ids))
        found: dict[str, DocumentState] = {}
        for batch in _batches(ids):
            among, params = _among("d.document_id", batch, self.db.dialect)
            rows = await self.db.fetch_all(
                "SELECT " + _STATE_COLUMNS + _STATE_FROM + f"WHERE {among} ORDER BY k.chunk_key",
                {"model": self._model or "", **params},
            )
            found.update(_states(rows))
        for document_id in ids:
            found.setdefault(document_id, DocumentState(document_id, None, ()))
        return found

    async def document_ids(self, *, after: str, limit: int) -> list[str]:
        """Up to ``limit`` document IDs after ``after``, in order (for paging through the store)."""
        rows = await self.db.fetch_all(
            "SELECT document_id FROM rag_documents WHERE document_id > :after ORDER BY document_id LIMIT :limit",
            {"after": after, "limit": limit},
        )
        return [str(r[0]) for r in rows]

    async def versions(self, document_ids: Iterable[str]) -> dict[str, StoredVersion]:
        """The stored version (and chunk count) of each of these documents that exists."""
        found: dict[str, StoredVersion] = {}
        for batch in _batches(sorted(set(document_ids))):
            among, params = _among("d.document_id", batch, self.db.dialect)
            rows = await self.db.fetch_all(_VERSIONS + among, params)
            found.update((str(r[0]), _stored_version(r)) for r in rows)
        return found

    async def get_document(self, document_id: str) -> tuple[DocumentRecord, str] | None:
        """A committed document and its text, read together (never half of a replace)."""
        row = await self.db.fetch_one(
            """SELECT d.document_id, d.content_type, d.metadata, d.content_hash, d.update_time, c.text,
                      (SELECT COUNT(*) FROM rag_chunks k WHERE k.document_id = d.document_id)
               FROM rag_documents d JOIN rag_contents c ON c.content_hash = d.content_hash
               WHERE d.document_id = :id""",
            {"id": document_id},
        )
        if row is None:
            return None
        record = DocumentRecord(row[0], row[1], json.loads(row[2]), row[3], float(row[4]), int(row[6]))
        return record, str(row[5])

    async def stored_vectors(self, content_hashes: Iterable[str]) -> dict[str, Vector]:
        """Embeddings already stored for these chunk hashes (under this store's model)."""
        if self._model is None:
            return {}
        found: dict[str, Vector] = {}
        for batch in _batches(sorted(set(content_hashes))):
            among, params = _among("content_hash", batch, self.db.dialect)
            rows = await self.db.fetch_all(
                f"SELECT content_hash, vector FROM rag_embeddings WHERE model = :model AND {among}",
                {"model": self._model, **params},
            )
            found.update((str(h), _vector(v)) for h, v in rows)
        return found

    # --- writes ---------------------------------------------------------------------------

    async def put_vectors(self, vectors: Mapping[str, Vector]) -> None:
        if self._model is None or not vectors:
            return
        async with self.db.transaction() as tx:
            await self._insert_vectors(tx, vectors)

    async def apply(
        self,
        writes: Sequence[DocumentWrite],
        deletes: Sequence[str] = (),
        *,
        unchanged: Mapping[str, DocumentVersion] | None = None,
    ) -> Committed:
        """Commit writes and deletes in one transaction, as one new generation.

        A write whose document already holds exactly that version is skipped. ``unchanged``
        names documents the caller did not prepare because it read them as stored in that
        version: if one no longer is, StaleVersion is raised (nothing committed) so the caller
        can prepare it. Raises NothingToWrite (nothing committed) when no document changes, and
        KeyError naming a deleted document that does not exist.
        """
        unchanged = unchanged or {}
        async with self.db.transaction() as tx:
            # First: the generation row lock orders this commit after every earlier one (all
            # replicas), so the reads below see everything committed before it.
            generation = int(
                (
                    await tx.execute(
                        "UPDATE rag_meta SET value = CAST(CAST(value AS BIGINT) + 1 AS TEXT)"
                        " WHERE key = 'generation' RETURNING value"
                    )
                ).scalar()
            )
            touched = [*deletes, *(w.document_id for w in writes), *unchanged]
            stored = await _versions_in(tx, touched)
            stale = [d for d, v in unchanged.items() if d not in stored or stored[d].version != v]
            if stale:
                raise StaleVersion(stale)
            missing = [d for d in deletes if d not in stored]
            if missing:
                raise KeyError(missing[0])
            outcomes = {d: ("unchanged", stored[d].chunk_count) for d in unchanged}
            for write in writes:
                before = stored.get(write.document_id)
                if before is not None and before.version == write.version:
                    outcomes[write.document_id] = ("unchanged", before.chunk_count)
                else:
                    outcomes[write.document_id] = ("created" if before is None else "replaced", len(write.chunks))
            changed = [*deletes, *(d for d, (outcome, _) in outcomes.items() if outcome != "unchanged")]
            if not changed:
                raise NothingToWrite()
            old_texts = {stored[d].version.content_hash for d in changed if d in stored}
            # Only documents that existed have chunks to look up (or, below, to delete): a batch of
            # new documents skips both statements.
            replaced = [d for d in changed if d in stored]
            old_chunks = await _chunk_hashes(tx, replaced)
            if deletes:
                among, params = _among("document_id", list(deletes), tx.dialect)
                await tx.execute(f"DELETE FROM rag_documents WHERE {among}", params)
            now = time.time()
            states = {d: DocumentState(d, None, ()) for d in deletes}
            states.update(
                await self._write_documents(
                    tx, [w for w in writes if outcomes[w.document_id][0] != "unchanged"], now, replaced=set(replaced)
                )
            )
            await _collect_garbage(tx, old_texts, old_chunks)
            await _insert(
                tx,
                "rag_changes",
                {"generation": "BIGINT", "document_id": "TEXT", "committed_at": "DOUBLE PRECISION"},
                [(generation, d, now) for d in changed],
            )
            if generation > CHANGES_RETAINED:  # before that, every change is retained
                await tx.execute(
                    "DELETE FROM rag_changes WHERE generation <= :horizon", {"horizon": generation - CHANGES_RETAINED}
                )
            await tx.notify(GENERATION_CHANNEL)
        return Committed(generation, outcomes, now, states)

    async def _write_documents(
        self, tx: Transaction, writes: Sequence[DocumentWrite], update_time: float, *, replaced: set[str]
    ) -> dict[str, DocumentState]:
        """Write documents with their texts, chunks and vectors: a few multi-row statements per batch,
        never a round trip per document or chunk (a batch of 100 stays a handful of statements).
        Returns their states as committed (chunk keys as the database assigned them)."""
        if not writes:
            return {}
        metadata = {w.document_id: json.dumps(dict(w.metadata), sort_keys=True) for w in writes}
        texts = {w.content_hash: w.text for w in writes}
        await _insert(
            tx,
            "rag_contents",
            {"content_hash": "TEXT", "text": "TEXT"},
            [(h, texts[h]) for h in sorted(texts)],
            "ON CONFLICT (content_hash) DO NOTHING",
        )
        await _insert(
            tx,
            "rag_documents",
            {
                "document_id": "TEXT",
                "content_type": "TEXT",
                "metadata": "TEXT",
                "content_hash": "TEXT",
                "update_time": "DOUBLE PRECISION",
            },
            [(w.document_id, w.content_type, metadata[w.document_id], w.content_hash, update_time) for w in writes],
            "ON CONFLICT (document_id) DO UPDATE SET content_type = excluded.content_type,"
            " metadata = excluded.metadata, content_hash = excluded.content_hash,"
            " update_time = excluded.update_time",
        )
        for batch in _batches([w.document_id for w in writes if w.document_id in replaced]):
            among, params = _among("document_id", batch, tx.dialect)
            await tx.execute(f"DELETE FROM rag_chunks WHERE {among}", params)
        inserted = await _insert(
            tx,
            "rag_chunks",
            {
                "document_id": "TEXT",
                "ordinal": "INTEGER",
                "start_offset": "INTEGER",
                "end_offset": "INTEGER",
                "heading": "TEXT",
                "content_hash": "TEXT",
                "tokens": "TEXT",
            },
            [
                (w.document_id, c.ordinal, c.start, c.end, c.heading, c.content_hash, " ".join(c.tokens))
                for w in writes
                for c in w.chunks
            ],
            "RETURNING document_id, ordinal, chunk_key",
        )
        keys = {(str(r[0]), int(r[1])): int(r[2]) for r in inserted}
        vectors = {h: v for w in writes for h, v in w.vectors.items()}
        if vectors:
            await self._insert_vectors(tx, vectors)
        # Without a model no vector is stored, so none is read back either.
        with_vectors = self._model is not None
        return {
            w.document_id: _written_state(w, metadata[w.document_id], update_time, keys, vectors=with_vectors)
            for w in writes
        }

    async def _insert_vectors(self, tx: Transaction, vectors: Mapping[str, Vector]) -> None:
        if self._model is None:
            return
        await _insert(
            tx,
            "rag_embeddings",
            {"content_hash": "TEXT", "model": "TEXT", "vector": "BYTEA"},
            [(h, self._model, np.asarray(vectors[h], dtype=np.float32).tobytes()) for h in sorted(vectors)],
            "ON CONFLICT (content_hash, model) DO NOTHING",
        )


def _written_state(
    write: DocumentWrite, metadata: str, update_time: float, keys: Mapping[tuple[str, int], int], *, vectors: bool
) -> DocumentState:
    """What ``_states`` reads back for a document just written (values as they round-trip)."""
    record = DocumentRecord(
        write.document_id, write.content_type, json.loads(metadata), write.content_hash, update_time, len(write.chunks)
    )
    chunks = sorted(
        (
            ChunkRecord(
                key=keys[(write.document_id, chunk.ordinal)],
                document_id=write.document_id,
                ordinal=chunk.ordinal,
                start=chunk.start,
                end=chunk.end,
                heading=chunk.heading,
                text=write.text[chunk.start : chunk.end],
                content_hash=chunk.content_hash,
                tokens=tuple(chunk.tokens),
                vector=write.vectors.get(chunk.content_hash) if vectors else None,
            )
            for chunk in write.chunks
        ),
        key=lambda c: c.key,
    )
    return DocumentState(write.document_id, record, tuple(chunks))


_VERSIONS = """SELECT d.document_id, d.content_hash, d.content_type, d.metadata,
  (SELECT COUNT(*) FROM rag_chunks k WHERE k.document_id = d.document_id)
FROM rag_documents d WHERE """


def _stored_version(row: Row) -> StoredVersion:
    return StoredVersion(DocumentVersion(str(row[1]), str(row[2]), json.loads(row[3])), int(row[4]))


async def _versions_in(tx: Transaction, document_ids: Sequence[str]) -> dict[str, StoredVersion]:
    found: dict[str, StoredVersion] = {}
    for batch in _batches(sorted(set(document_ids))):
        among, params = _among("d.document_id", batch, tx.dialect)
        result = await tx.execute(_VERSIONS + among, params)
        found.update((str(r[0]), _stored_version(r)) for r in result.rows)
    return found


async def _chunk_hashes(tx: Transaction, document_ids: Sequence[str]) -> set[str]:
    hashes: set[str] = set()
    for batch in _batches(sorted(set(document_ids))):
        among, params = _among("document_id", batch, tx.dialect)
        result = await tx.execute(f"SELECT content_hash FROM rag_chunks WHERE {among}", params)
        hashes.update(str(r[0]) for r in result.rows)
    return hashes


async def _collect_garbage(tx: Transaction, texts: set[str], chunk_hashes: set[str]) -> None:
    """Drop texts and embeddings that lost their last reference in this transaction."""
    for batch in _batches(sorted(texts)):
        among, params = _among("content_hash", batch, tx.dialect)
        await tx.execute(
            f"DELETE FROM rag_contents WHERE {among}"
            " AND NOT EXISTS (SELECT 1 FROM rag_documents d WHERE d.content_hash = rag_contents.content_hash)",
            params,
        )
    for batch in _batches(sorted(chunk_hashes)):
        among, params = _among("content_hash", batch, tx.dialect)
        await tx.execute(
            f"DELETE FROM rag_embeddings WHERE {among}"
            " AND NOT EXISTS (SELECT 1 FROM rag_chunks k WHERE k.content_hash = rag_embeddings.content_hash)",
            params,
        )


# --- statements whose text does not depend on how many rows they carry ----------------------
#
# On PostgreSQL a list travels as one array parameter (``unnest`` / ``= ANY``), so each statement
# has one text whatever the batch: compiled by SQLAlchemy and prepared by the server once per
# connection, with a handful of parameters instead of one per value. (Row-by-row VALUES made a
# new statement for nearly every batch, as its chunk count varies.) SQLite, in process, takes
# lists of parameters.


def _among(column: str, values: Sequence[str], dialect: Dialect) -> tuple[str, dict[str, Any]]:
    """``column`` is one of ``values`` (text), and its parameters."""
    if dialect == "postgresql":
        return f"{column} = ANY(CAST(:among AS TEXT[]))", {"among": list(values)}
    marks, params = in_list("among", values)
    return f"{column} IN {marks}", params


async def _insert(
    tx: Transaction, table: str, columns: Mapping[str, str], rows: Sequence[Sequence[Any]], suffix: str = ""
) -> list[Row]:
    """Insert ``rows`` (values in the order of ``columns``, which maps each name to its PostgreSQL
    type); returns what ``suffix``'s RETURNING clause returns, if any."""
    if not rows:
        return []
    names = ", ".join(columns)
    if tx.dialect == "postgresql":
        arrays = ", ".join(f"CAST(:c{i} AS {kind}[])" for i, kind in enumerate(columns.values()))
        params = {f"c{i}": [row[i] for row in rows] for i in range(len(columns))}
        result = await tx.execute(f"INSERT INTO {table} ({names}) SELECT * FROM unnest({arrays}) {suffix}", params)
        return list(result.rows)
    returned: list[Row] = []
    for batch in _batches(rows, 100):
        values = ", ".join("(" + ", ".join(f":r{j}c{i}" for i in range(len(columns))) + ")" for j in range(len(batch)))
        params = {f"r{j}c{i}": value for j, row in enumerate(batch) for i, value in enumerate(row)}
        result = await tx.execute(f"INSERT INTO {table} ({names}) VALUES {values} {suffix}", params)
        returned += result.rows
    return returned


def _states(rows: Sequence[Row]) -> dict[str, DocumentState]:
    """Group state rows (``_STATE_COLUMNS``, chunks in key order) by document."""
    records: dict[str, tuple[Any, ...]] = {}
    chunks: dict[str, list[ChunkRecord]] = {}
    for row in rows:
        document_id = str(row[0])
        records.setdefault(document_id, (row[1], row[2], row[3], row[4]))
        bucket = chunks.setdefault(document_id, [])
        if row[5] is None:
            continue  # a document without chunks (LEFT JOIN)
        bucket.append(
            ChunkRecord(
                key=int(row[5]),
                document_id=document_id,
                ordinal=int(row[6]),
                start=int(row[7]),
                end=int(row[8]),
                heading=str(row[9]),
                text=str(row[12]),
                content_hash=str(row[10]),
                tokens=tuple(str(row[11]).split()),
                vector=None if row[13] is None else _vector(row[13]),
            )
        )
    states: dict[str, DocumentState] = {}
    for document_id, (content_type, metadata, content_hash, update_time) in records.items():
        record = DocumentRecord(
            document_id,
            str(content_type),
            json.loads(metadata),
            str(content_hash),
            float(update_time),
            len(chunks[document_id]),
        )
        states[document_id] = DocumentState(document_id, record, tuple(chunks[document_id]))
    return states


def _vector(blob: bytes | memoryview) -> Vector:
    return np.frombuffer(bytes(blob), dtype=np.float32)


def _batches(items: Sequence[Any], size: int = 500) -> Iterator[Sequence[Any]]:
    """Slices small enough for the drivers' limits on bound parameters."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
