"""Idempotency keys an earlier build kept (in a table it created by itself) survive the move to the
versioned migrations: the table is adopted as version 1 and a recorded outcome is still replayed."""

from __future__ import annotations

import time
from pathlib import Path

from interceptors.idempotency import Entry
from runtime.database import open_database, wait_until_reachable
from runtime.idempotency import DatabaseStore

# The DDL the stores ran before the migrations owned the table, per backend.
EARLIER_TABLE = {
    "sqlite": """
        CREATE TABLE IF NOT EXISTS idempotency_keys (
            key TEXT PRIMARY KEY,
            fingerprint TEXT NOT NULL,
            owner TEXT,
            record BLOB,
            expires_at REAL NOT NULL
        ) WITHOUT ROWID""",
    "postgresql": """
        CREATE TABLE IF NOT EXISTS idempotency_keys (
            key         TEXT PRIMARY KEY,
            fingerprint TEXT NOT NULL,
            owner       TEXT,
            record      BYTEA,
            expires_at  DOUBLE PRECISION NOT NULL
        )""",
}


async def test_a_key_table_an_earlier_build_created_is_adopted_with_its_keys(tmp_path: Path, database_url: str) -> None:
    path = tmp_path / "agent-idempotency.sqlite3"
    prefix = "agent:" if database_url else ""
    earlier = await open_database(database_url, sqlite_path=path, setting="TEST")
    await wait_until_reachable(earlier)
    async with earlier.transaction() as tx:
        await tx.execute(EARLIER_TABLE[earlier.dialect])
        await tx.execute(
            "INSERT INTO idempotency_keys (key, fingerprint, owner, record, expires_at)"
            " VALUES (:k, 'fp', NULL, :r, :e)",
            {"k": f"{prefix}k", "r": b"outcome", "e": time.time() + 3600},
        )
    await earlier.close()

    store = DatabaseStore.at(database_url, sqlite_path=path, setting="TEST", prefix=prefix)
    try:
        assert await store.claim("k", "fp", "owner-b", lease=60) == Entry("fp", b"outcome")
        assert await store.claim("new", "fp", "owner-b", lease=60) is None
    finally:
        await store.close()

    db = await open_database(database_url, sqlite_path=path, setting="TEST")
    try:
        version = await db.fetch_one("SELECT version FROM schema_migrations WHERE component = 'idempotency'")
        assert version is not None and version[0] == 1
    finally:
        await db.close()
