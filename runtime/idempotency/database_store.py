"""Idempotency keys in a ``runtime.database`` database: a SQLite file of the service's by default,
PostgreSQL when the keys are shared by every replica (beside the service's own data).

Each key is a row (fingerprint, owner, record, expires_at). A claim is one upsert that inserts a
new key or takes over an expired one (``ON CONFLICT ... DO UPDATE ... WHERE`` expired): of many
concurrent claims of a key exactly one gets its row back; the others read the live entry (a
replay, or a call in progress). Times come from the database's clock, so replicas with skewed
clocks agree on expiry. Completion and release only match the claim's owner.

The table is the versioned migrations' (component ``idempotency``). Its first step creates it
``IF NOT EXISTS``: a table an earlier build created by itself, with these same columns, is
adopted as version 1, keys and all.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from interceptors.idempotency.store import Entry
from runtime.database import Database, Dialect, Migration, Schema, open_database

SCHEMA = Schema(
    "idempotency",
    (
        Migration(
            1,
            sqlite="""
            CREATE TABLE IF NOT EXISTS idempotency_keys (
                key TEXT PRIMARY KEY,
                fingerprint TEXT NOT NULL,
                owner TEXT,
                record BLOB,
                expires_at REAL NOT NULL
            ) WITHOUT ROWID;
            CREATE INDEX IF NOT EXISTS idempotency_keys_expiry ON idempotency_keys (expires_at);
            """,
            postgresql="""
            CREATE TABLE IF NOT EXISTS idempotency_keys (
                key         TEXT PRIMARY KEY,
                fingerprint TEXT NOT NULL,
                owner       TEXT,
                record      BYTEA,
                expires_at  DOUBLE PRECISION NOT NULL
            );
            CREATE INDEX IF NOT EXISTS idempotency_keys_expiry ON idempotency_keys (expires_at);
            """,
        ),
    ),
)

# Seconds since the epoch by the database's clock (rows written by earlier builds used the same scale).
_NOW: dict[Dialect, str] = {
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
    "postgresql": "extract(epoch FROM clock_timestamp())",
}
# How often expired keys are purged; lookups ignore them in between.
_PURGE_EVERY_S = 60.0


@dataclass(frozen=True, slots=True)
class _Statements:
    claim: str
    live_entry: str
    complete: str
    release: str
    purge: str

    @classmethod
    def of(cls, dialect: Dialect) -> _Statements:
        now = _NOW[dialect]
        return cls(
            claim=f"""
            INSERT INTO idempotency_keys (key, fingerprint, owner, record, expires_at)
            VALUES (:key, :fingerprint, :owner, NULL, {now} + :lease)
            ON CONFLICT (key) DO UPDATE
               SET fingerprint = excluded.fingerprint, owner = excluded.owner, record = NULL,
                   expires_at = excluded.expires_at
             WHERE idempotency_keys.expires_at <= {now}
            RETURNING owner
            """,
            live_entry=f"SELECT fingerprint, record FROM idempotency_keys WHERE key = :key AND expires_at > {now}",
            complete=f"""
            UPDATE idempotency_keys SET owner = NULL, record = :record, expires_at = {now} + :ttl
             WHERE key = :key AND owner = :owner AND expires_at > {now}
            """,
            release="DELETE FROM idempotency_keys WHERE key = :key AND owner = :owner",
            purge=f"DELETE FROM idempotency_keys WHERE expires_at <= {now}",
        )


class DatabaseStore:
    """An ``IdempotencyStore`` in the database ``open_db`` opens; keys are namespaced by ``prefix``.

    The database is opened and migrated on first use, not at construction: the store is built
    before the server listens, and a database that is down then must not fail the start (the
    interceptor answers UNAVAILABLE meanwhile; the next call tries again).
    """

    def __init__(self, open_db: Callable[[], Awaitable[Database]], *, prefix: str = "") -> None:
        self._open_db = open_db
        self._prefix = prefix
        self._db: Database | None = None
        self._sql = _Statements.of("sqlite")
        self._opening = asyncio.Lock()
        self._next_purge = 0.0

    @classmethod
    def at(cls, url: str, *, sqlite_path: Path, setting: str, prefix: str = "", pool_size: int = 3) -> DatabaseStore:
        """The store in the PostgreSQL database ``url`` names, or in the SQLite file ``sqlite_path`` when it is ""."""
        return cls(
            lambda: open_database(url, sqlite_path=sqlite_path, setting=setting, pool_size=pool_size), prefix=prefix
        )

    async def _database(self) -> Database:
        if self._db is not None:
            return self._db
        async with self._opening:
            if self._db is None:
                db = await self._open_db()
                try:
                    await db.migrate(SCHEMA)
                except BaseException:
                    await db.close()
                    raise
                self._sql = _Statements.of(db.dialect)
                self._db = db
            return self._db

    async def claim(self, key: str, fingerprint: str, owner: str, *, lease: float) -> Entry | None:
        db = await self._database()
        if time.monotonic() >= self._next_purge:
            self._next_purge = time.monotonic() + _PURGE_EVERY_S
            await db.execute(self._sql.purge)
        params = {"key": self._prefix + key, "fingerprint": fingerprint, "owner": owner, "lease": lease}
        while True:
            # Each statement is atomic on its own: no transaction (and no lock) around them, so
            # replays of one key do not queue behind each other.
            if (await db.execute(self._sql.claim, params)).first() is not None:
                return None
            row = await db.fetch_one(self._sql.live_entry, params)
            if row is not None:
                return Entry(row[0], row[1])
            # Released or expired between the two statements: claim again.

    async def complete(self, key: str, owner: str, record: bytes, *, ttl: float) -> None:
        db = await self._database()
        await db.execute(self._sql.complete, {"key": self._prefix + key, "owner": owner, "record": record, "ttl": ttl})

    async def release(self, key: str, owner: str) -> None:
        db = await self._database()
        await db.execute(self._sql.release, {"key": self._prefix + key, "owner": owner})

    async def close(self) -> None:
        async with self._opening:
            db, self._db = self._db, None
        if db is not None:
            await db.close()
