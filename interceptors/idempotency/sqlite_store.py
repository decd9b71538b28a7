"""Idempotency keys in SQLite: the default, survives a restart, needs no server.

Each operation is one short transaction run on a dedicated thread, so the event loop
never blocks on disk and the claim (read, then write) is atomic: ``BEGIN IMMEDIATE``
takes the write lock first, which also makes it safe for several processes sharing
one database file.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from interceptors.idempotency.store import Entry

_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    owner TEXT,
    record BLOB,
    expires_at REAL NOT NULL
) WITHOUT ROWID
"""
# How often expired keys are purged; lookups ignore them in between.
_PURGE_EVERY = 60.0


class SQLiteStore:
    """A store in the SQLite database at ``path`` (created if missing)."""

    def __init__(self, *, path: str | Path) -> None:
        self._path = str(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="idempotency-sqlite")
        self._db: sqlite3.Connection | None = None
        self._next_purge = 0.0

    async def _run(self, fn: Callable[..., _T], *args: object) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            if self._path != ":memory:":
                Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            # Only ever used from the store's one thread; autocommit so BEGIN is explicit.
            db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=5000")
            db.execute(_SCHEMA)
            self._db = db
        return self._db

    def _claim(self, key: str, fingerprint: str, owner: str, lease: float) -> Entry | None:
        db = self._connection()
        now = time.time()
        db.execute("BEGIN IMMEDIATE")
        try:
            if now >= self._next_purge:
                db.execute("DELETE FROM idempotency_keys WHERE expires_at <= ?", (now,))
                self._next_purge = now + _PURGE_EVERY
            row = db.execute(
                "SELECT fingerprint, record FROM idempotency_keys WHERE key = ? AND expires_at > ?",
                (key, now),
            ).fetchone()
            if row is None:
                db.execute(
                    "INSERT OR REPLACE INTO idempotency_keys (key, fingerprint, owner, record, expires_at) "
                    "VALUES (?, ?, ?, NULL, ?)",
                    (key, fingerprint, owner, now + lease),
                )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return None if row is None else Entry(row[0], row[1])

    def _complete(self, key: str, owner: str, record: bytes, ttl: float) -> None:
        self._connection().execute(
            "UPDATE idempotency_keys SET owner = NULL, record = ?, expires_at = ? WHERE key = ? AND owner = ?",
            (record, time.time() + ttl, key, owner),
        )

    def _release(self, key: str, owner: str) -> None:
        self._connection().execute("DELETE FROM idempotency_keys WHERE key = ? AND owner = ?", (key, owner))

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def claim(self, key: str, fingerprint: str, owner: str, *, lease: float) -> Entry | None:
        return await self._run(self._claim, key, fingerprint, owner, lease)

    async def complete(self, key: str, owner: str, record: bytes, *, ttl: float) -> None:
        await self._run(self._complete, key, owner, record, ttl)

    async def release(self, key: str, owner: str) -> None:
        await self._run(self._release, key, owner)

    async def close(self) -> None:
        await self._run(self._close)
        self._executor.shutdown(wait=True)
