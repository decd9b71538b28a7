"""SQLite for the embedded backends: one serialized writer, a separate reader, WAL between them.

WAL lets readers see the last committed snapshot while a write transaction is open, so
queries never observe half of a state change and never wait behind the writer. Writes go
through one connection guarded by a lock: SQLite admits one writer at a time anyway, and
serializing in-process avoids busy-retry loops on the hot path.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    # NORMAL is durable across process crashes in WAL mode (only an OS crash can lose the
    # last transactions), which is the failure model the saga and outbox are built for.
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=10000",
)


class Transaction:
    """An open write transaction: run statements on ``conn``; ``on_commit`` runs after COMMIT."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn
        self._after_commit: list[Callable[[], None]] = []

    async def execute(self, sql: str, params: Iterable[Any] = ()) -> aiosqlite.Cursor:
        return await self.conn.execute(sql, tuple(params))

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the transaction has committed (never if it rolls back)."""
        self._after_commit.append(callback)

    def run_commit_callbacks(self) -> None:
        callbacks, self._after_commit = self._after_commit, []
        for callback in callbacks:
            callback()


class Database:
    """A SQLite file opened for one writer and concurrent snapshot readers."""

    def __init__(self, path: Path, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self.path = path
        self._writer = writer
        self._reader = reader
        self._write_lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: str | Path) -> Database:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves so a transaction's extent is explicit.
        writer = await aiosqlite.connect(path, isolation_level=None)
        reader = await aiosqlite.connect(path, isolation_level=None)
        for conn in (writer, reader):
            conn.row_factory = aiosqlite.Row
            for pragma in _PRAGMAS:
                await conn.execute(pragma)
        await reader.execute("PRAGMA query_only=ON")
        return cls(path, writer, reader)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """A write transaction: committed if the block returns, rolled back if it raises.

        Safe under cancellation: BEGIN, COMMIT and ROLLBACK always run to completion before a
        CancelledError goes through, so the connection never passes to the next transaction
        mid-statement, and a transaction whose COMMIT went through still counts as committed.
        """
        async with self._write_lock:
            try:
                # IMMEDIATE takes the write lock up front, so a read-then-write never fails midway.
                await self._complete("BEGIN IMMEDIATE")
            except BaseException:
                await self._rollback()
                raise
            tx = Transaction(self._writer)
            try:
                yield tx
            except BaseException:
                await self._rollback()
                raise
            try:
                await self._complete("COMMIT")
            except BaseException:
                committed = not self._writer.in_transaction
                await self._rollback()
                if committed:
                    tx.run_commit_callbacks()
                raise
        tx.run_commit_callbacks()

    async def _complete(self, sql: str) -> None:
        statement = asyncio.ensure_future(self._writer.execute(sql))
        try:
            await asyncio.shield(statement)
        except asyncio.CancelledError:
            await asyncio.wait({statement})
            if not statement.cancelled():
                statement.exception()  # retrieved; the cancellation is what the caller sees
            raise

    async def _rollback(self) -> None:
        if self._writer.in_transaction:
            await self._complete("ROLLBACK")

    async def executescript(self, script: str) -> None:
        """Run DDL (idempotent ``CREATE ... IF NOT EXISTS``) outside any open transaction."""
        async with self._write_lock:
            await self._writer.executescript(script)

    async def fetch_all(self, sql: str, params: Iterable[Any] = ()) -> list[aiosqlite.Row]:
        async with self._reader.execute(sql, tuple(params)) as cursor:
            return list(await cursor.fetchall())

    async def fetch_one(self, sql: str, params: Iterable[Any] = ()) -> aiosqlite.Row | None:
        async with self._reader.execute(sql, tuple(params)) as cursor:
            return await cursor.fetchone()

    async def close(self) -> None:
        await self._reader.close()
        await self._writer.close()
