"""Idempotency keys in PostgreSQL: shared by every replica, beside the service's own data.

Each key is a row (fingerprint, owner, record, expires_at). A claim is ``INSERT ... ON CONFLICT
DO NOTHING``: of many concurrent claims of a new key exactly one inserts the row. The others
read the row that is there (a replay or a call in progress: no lock is taken, so replays of
one key do not queue behind each other); an expired row is taken over with a conditional
UPDATE, which again only one claimant wins. Times come from the database's clock, so replicas
with skewed clocks agree on expiry. Completion and release only match the claim's owner.

asyncpg directly (not the services' database layer): this store sits below ``runtime/`` and
speaks PostgreSQL only, so its statements need no dialect layer.
"""

from __future__ import annotations

import asyncio

import asyncpg

from interceptors.idempotency.store import Entry

_NOW = "extract(epoch FROM clock_timestamp())"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key         TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    owner       TEXT,
    record      BYTEA,
    expires_at  DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS idempotency_keys_expiry ON idempotency_keys (expires_at);
"""
# Serializes the CREATEs of replicas starting together (concurrent IF NOT EXISTS can collide).
_SCHEMA_LOCK = 0x61676D5F6964656D  # "agm_idem"
_CLAIM = f"""
INSERT INTO idempotency_keys (key, fingerprint, owner, record, expires_at)
VALUES ($1, $2, $3, NULL, {_NOW} + $4)
ON CONFLICT (key) DO NOTHING
RETURNING owner
"""
_EXISTING = f"SELECT fingerprint, record, expires_at > {_NOW} AS live FROM idempotency_keys WHERE key = $1"
_TAKE_OVER = f"""
UPDATE idempotency_keys SET fingerprint = $2, owner = $3, record = NULL, expires_at = {_NOW} + $4
 WHERE key = $1 AND expires_at <= {_NOW}
RETURNING owner
"""
_COMPLETE = f"""
UPDATE idempotency_keys SET owner = NULL, record = $3, expires_at = {_NOW} + $4
 WHERE key = $1 AND owner = $2 AND expires_at > {_NOW}
"""
_RELEASE = "DELETE FROM idempotency_keys WHERE key = $1 AND owner = $2"
_PURGE = f"DELETE FROM idempotency_keys WHERE expires_at <= {_NOW}"
_PURGE_EVERY = 60.0


class PostgresStore:
    """A store in the PostgreSQL database at ``url``; keys are namespaced by ``prefix``."""

    def __init__(self, *, url: str, prefix: str = "", pool_size: int = 5) -> None:
        self._url = url.replace("postgresql+asyncpg://", "postgresql://", 1)
        self._prefix = prefix
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()
        self._next_purge = 0.0

    async def _connections(self) -> asyncpg.Pool:
        # Opened on first use: the store is built before the event loop serves, and a database
        # that is down at start must not fail the build (the interceptor answers UNAVAILABLE).
        async with self._opening:
            if self._pool is None:
                pool = await asyncpg.create_pool(self._url, min_size=1, max_size=self._pool_size, timeout=5)
                async with pool.acquire() as conn, conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
                    await conn.execute(_SCHEMA)
                self._pool = pool
            return self._pool

    async def claim(self, key: str, fingerprint: str, owner: str, *, lease: float) -> Entry | None:
        pool = await self._connections()
        loop = asyncio.get_running_loop()
        if loop.time() >= self._next_purge:
            self._next_purge = loop.time() + _PURGE_EVERY
            await pool.execute(_PURGE)
        scoped = self._prefix + key
        while True:
            if await pool.fetchval(_CLAIM, scoped, fingerprint, owner, lease) is not None:
                return None
            row = await pool.fetchrow(_EXISTING, scoped)
            if row is None:
                continue  # released between the two statements: claim again
            if row["live"]:
                return Entry(row["fingerprint"], row["record"])
            if await pool.fetchval(_TAKE_OVER, scoped, fingerprint, owner, lease) is not None:
                return None
            # Another claimant took the expired row first: read what it holds.

    async def complete(self, key: str, owner: str, record: bytes, *, ttl: float) -> None:
        await (await self._connections()).execute(_COMPLETE, self._prefix + key, owner, record, ttl)

    async def release(self, key: str, owner: str) -> None:
        await (await self._connections()).execute(_RELEASE, self._prefix + key, owner)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
