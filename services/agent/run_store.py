"""Runs and their event log in SQLite: a state change and its event commit together.

The run is stored as its serialized proto (the contract is the schema) beside the columns
that queries filter and sort on. `(creator, request_id)` is unique, so an AIP-155 retry can
never create a second run, even when two retries race.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

from agentmesh.agent.v1 import run_pb2

_SCHEMA = """
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS runs (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  run_id TEXT NOT NULL UNIQUE,
  state INTEGER NOT NULL,
  creator TEXT NOT NULL,
  request_id TEXT,
  request_hash TEXT NOT NULL,
  body BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS runs_request ON runs(creator, request_id) WHERE request_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS runs_state ON runs(state, seq);
CREATE TABLE IF NOT EXISTS run_events (
  sequence INTEGER PRIMARY KEY AUTOINCREMENT,
  event_id TEXT NOT NULL UNIQUE,
  run_id TEXT NOT NULL,
  body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS run_events_run ON run_events(run_id, sequence);
"""


@dataclass(frozen=True, slots=True)
class Transition:
    """One event to append with a state change."""

    type: str
    from_state: run_pb2.Run.State.ValueType
    to_state: run_pb2.Run.State.ValueType
    cause: str


class RequestIdConflictError(Exception):
    """The request ID was already used by this caller for a different request."""


class StaleStateError(Exception):
    """The run changed state since it was read; the caller re-reads and decides again."""

    def __init__(self, actual: run_pb2.Run.State.ValueType) -> None:
        super().__init__(actual)
        self.actual = actual


def new_run_id() -> str:
    return f"run_{uuid.uuid4().hex}"


class RunStore:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._db: aiosqlite.Connection | None = None
        # Writers serialize here rather than on SQLite's busy timeout: one process owns the file.
        self._write_lock = asyncio.Lock()
        self._changed = asyncio.Condition()

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
            raise RuntimeError("RunStore is not open")
        return self._db

    async def _append_events(self, run: run_pb2.Run, transitions: Sequence[Transition]) -> None:
        for t in transitions:
            event = run_pb2.RunEvent(
                event_id=uuid.uuid4().hex,
                run_id=run.run_id,
                type=t.type,
                from_state=t.from_state,
                to_state=t.to_state,
                cause=t.cause,
            )
            event.create_time.FromNanoseconds(time.time_ns())
            await self.db.execute(
                "INSERT INTO run_events (event_id, run_id, body) VALUES (?, ?, ?)",
                (event.event_id, run.run_id, event.SerializeToString()),
            )

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def create(
        self, run: run_pb2.Run, *, request_hash: str, transitions: Sequence[Transition]
    ) -> tuple[run_pb2.Run, bool]:
        """Store a new run; with a request ID already used by its creator, return that run instead."""
        async with self._write_lock:
            if run.request_id:
                existing = await self._by_request(run.creator, run.request_id)
                if existing is not None:
                    stored_hash, stored = existing
                    if stored_hash != request_hash:
                        raise RequestIdConflictError(run.request_id)
                    return stored, False
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                await self.db.execute(
                    "INSERT INTO runs (run_id, state, creator, request_id, request_hash, body)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        run.run_id,
                        run.state,
                        run.creator,
                        run.request_id or None,
                        request_hash,
                        run.SerializeToString(),
                    ),
                )
                await self._append_events(run, transitions)
                await self.db.commit()
            except BaseException:
                await self.db.rollback()
                raise
        await self._notify()
        return run, True

    async def _by_request(self, creator: str, request_id: str) -> tuple[str, run_pb2.Run] | None:
        async with self.db.execute(
            "SELECT request_hash, body FROM runs WHERE creator = ? AND request_id = ?", (creator, request_id)
        ) as cur:
            row = await cur.fetchone()
        return None if row is None else (row[0], run_pb2.Run.FromString(row[1]))

    async def save(
        self,
        run: run_pb2.Run,
        *,
        expected_state: run_pb2.Run.State.ValueType,
        transitions: Sequence[Transition],
    ) -> None:
        """Write a changed run only if it is still in `expected_state` (compare-and-set)."""
        async with self._write_lock:
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                cur = await self.db.execute(
                    "UPDATE runs SET state = ?, body = ? WHERE run_id = ? AND state = ?",
                    (run.state, run.SerializeToString(), run.run_id, expected_state),
                )
                if cur.rowcount != 1:
                    await self.db.rollback()
                    current = await self.get(run.run_id)
                    raise StaleStateError(current.state if current else run_pb2.Run.STATE_UNSPECIFIED)
                await self._append_events(run, transitions)
                await self.db.commit()
            except StaleStateError:
                raise
            except BaseException:
                await self.db.rollback()
                raise
        await self._notify()

    async def get(self, run_id: str) -> run_pb2.Run | None:
        async with self.db.execute("SELECT body FROM runs WHERE run_id = ?", (run_id,)) as cur:
            row = await cur.fetchone()
        return None if row is None else run_pb2.Run.FromString(row[0])

    async def page(
        self, *, state: run_pb2.Run.State.ValueType, before_seq: int | None, limit: int
    ) -> tuple[list[run_pb2.Run], int | None]:
        """Newest first. Returns the page and the cursor for the next page (None on the last)."""
        sql = "SELECT seq, body FROM runs WHERE 1 = 1"
        params: list[object] = []
        if state:
            sql += " AND state = ?"
            params.append(state)
        if before_seq is not None:
            sql += " AND seq < ?"
            params.append(before_seq)
        sql += " ORDER BY seq DESC LIMIT ?"
        params.append(limit + 1)
        async with self.db.execute(sql, params) as cur:
            rows = list(await cur.fetchall())
        page = rows[:limit]
        next_cursor = page[-1][0] if len(rows) > limit else None
        return [run_pb2.Run.FromString(r[1]) for r in page], next_cursor

    async def events_after(self, run_id: str, after_sequence: int) -> list[run_pb2.RunEvent]:
        async with self.db.execute(
            "SELECT sequence, body FROM run_events WHERE run_id = ? AND sequence > ? ORDER BY sequence",
            (run_id, after_sequence),
        ) as cur:
            rows = await cur.fetchall()
        events = []
        for sequence, body in rows:
            event = run_pb2.RunEvent.FromString(body)
            event.sequence = sequence
            events.append(event)
        return events

    async def wait_for_change(self, timeout_s: float) -> None:
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout_s)

    async def count_by_state(self) -> dict[int, int]:
        async with self.db.execute("SELECT state, COUNT(*) FROM runs GROUP BY state") as cur:
            rows = await cur.fetchall()
        return {int(state): int(count) for state, count in rows}
