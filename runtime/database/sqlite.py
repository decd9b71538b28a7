"""Embedded SQLite backend: one serialized writer, a separate snapshot reader, WAL between them.

WAL lets readers see the last committed snapshot while a write transaction is open, so
queries never observe half of a state change and never wait behind the writer. Writes go
through one connection guarded by a lock: SQLite admits one writer at a time anyway, and
serializing in-process avoids busy-retry loops on the hot path. Statements take ``:name``
parameters, which sqlite3 binds natively.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import aiosqlite

from runtime.database.errors import SchemaMismatch
from runtime.database.interface import Dialect, Params, Result, Row
from runtime.database.migrations import Schema, record_version, recorded_version

_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    # NORMAL is durable across process crashes in WAL mode (only an OS crash can lose the
    # last transactions), which is the failure model the saga and outbox are built for.
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=10000",
)


class SQLiteTransaction:
    """An open write transaction on the writer connection."""

    dialect: Dialect = "sqlite"

    def __init__(self, db: SQLiteDatabase, conn: aiosqlite.Connection) -> None:
        self._db = db
        self.conn = conn
        self._after_commit: list[Callable[[], None]] = []

    async def execute(self, sql: str, params: Params | None = None) -> Result:
        async with self.conn.execute(sql, dict(params or {})) as cursor:
            rows = list(await cursor.fetchall())
            return Result(rows, cursor.rowcount)

    def on_commit(self, callback: Callable[[], None]) -> None:
        self._after_commit.append(callback)

    async def lock(self, name: str) -> None:
        # The writer is already exclusive (in-process lock + BEGIN IMMEDIATE across processes).
        return None

    async def lock_all(self, names: Sequence[str]) -> None:
        return None

    async def notify(self, channel: str) -> None:
        self.on_commit(lambda: self._db.wake(channel))

    def run_commit_callbacks(self) -> None:
        callbacks, self._after_commit = self._after_commit, []
        for callback in callbacks:
            callback()


class SQLiteDatabase:
    """A SQLite file opened for one writer and concurrent snapshot readers."""

    dialect: Dialect = "sqlite"

    def __init__(self, path: Path, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self.path = path
        self.description = str(path)
        self._writer = writer
        self._reader = reader
        self._write_lock = asyncio.Lock()
        self._listeners: defaultdict[str, list[Callable[[], None]]] = defaultdict(list)

    @classmethod
    async def open(cls, path: str | Path) -> SQLiteDatabase:
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
    async def transaction(self) -> AsyncIterator[SQLiteTransaction]:
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
            tx = SQLiteTransaction(self, self._writer)
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

    async def execute(self, sql: str, params: Params | None = None) -> Result:
        async with self.transaction() as tx:
            return await tx.execute(sql, params)

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

    # Each read runs to its end in one call on the reader's thread. A cursor left open between
    # calls keeps its statement active, and with it the connection's read snapshot: reads that
    # overlap one another (concurrent calls share the reader) would then keep an old snapshot
    # pinned, and a read made right after a commit could miss it (a run not found by the worker
    # that CreateRun had just handed it to).
    async def fetch_all(self, sql: str, params: Params | None = None) -> list[Row]:
        return list(await self._reader.execute_fetchall(sql, dict(params or {})))

    async def fetch_one(self, sql: str, params: Params | None = None) -> Row | None:
        """The first row; callers ask for one row (a key, an aggregate), so all rows are few."""
        rows = list(await self._reader.execute_fetchall(sql, dict(params or {})))
        return rows[0] if rows else None

    async def ping(self) -> None:
        # A read of the file itself (its schema page): SQLite answers a bare SELECT 1 without touching it.
        await self.fetch_all("SELECT 1 FROM sqlite_master LIMIT 1")

    async def migrate(self, schema: Schema) -> int:
        # BEGIN IMMEDIATE holds SQLite's file write lock: processes sharing the file migrate once.
        async with self.transaction() as tx:
            current = await recorded_version(tx, schema.component, real_type="REAL")
            if current is None:
                current = await self._legacy_version(tx, schema)
            schema.check(current, where=f"the database {self.path}")
            for migration in schema.pending(current):
                for statement in _statements(migration.sqlite):
                    await tx.execute(statement)
            if current != schema.latest:
                await record_version(tx, schema)
            if schema.legacy_table:
                # Older builds check user_version; keep it telling them the truth.
                await tx.execute(f"PRAGMA user_version = {int(schema.latest)}")
            return schema.latest

    async def _legacy_version(self, tx: SQLiteTransaction, schema: Schema) -> int:
        if not schema.legacy_table:
            return 0
        exists = (
            await tx.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = :t", {"t": schema.legacy_table}
            )
        ).scalar()
        if not exists:
            return 0
        version = int((await tx.execute("PRAGMA user_version")).scalar() or 0)
        if version == 0:
            raise SchemaMismatch(
                f"the database {self.path} has {schema.component!r} tables but no schema version: it was written"
                " by another agentmesh version; move the data dir aside (or delete it) and restart"
            )
        schema.check(version, where=f"the database {self.path}")
        return version

    async def listen(self, channel: str, callback: Callable[[], None]) -> None:
        # One process owns the writer: its own commits are all there is to hear. Called once
        # now, as PostgreSQL's listener does once it is connected.
        self._listeners[channel].append(callback)
        callback()

    def wake(self, channel: str) -> None:
        for callback in self._listeners.get(channel, ()):
            callback()

    async def close(self) -> None:
        await self._reader.close()
        await self._writer.close()


def _statements(script: str) -> list[str]:
    """Split a DDL script at statement ends, as SQLite's own parser sees them."""
    statements: list[str] = []
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n\t;"):
                statements.append(pending.strip())
            pending = ""
    if pending.strip(" \n\t;"):
        statements.append(pending.strip())
    return statements
