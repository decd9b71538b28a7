"""The write side: runs, their event log and the outbox, changed together in one transaction.

A state change, the event that records it and the outbox row that publishes it commit or
roll back as one, so the log, the bus and the run never disagree.

The log's ``sequence`` must become visible in commit order, or a reader resuming "after N"
could skip an event that commits later with a smaller number. A PostgreSQL sequence does not
give that (numbers are handed out at INSERT, transactions commit in any order), so every
transaction that appends takes the log's lock first (``Transaction.lock``: an advisory lock on
PostgreSQL, SQLite's single writer already) and numbers ``max + 1`` under it. The same lock
makes each command's read-then-write of a run atomic across replicas.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

import structlog

from runtime.database import Database, Migration, Schema, Transaction, in_list
from runtime.events.bus import Event
from runtime.events.outbox import Outbox
from services.agent.model import Citation, EventType, Run, RunEvent
from services.agent.state_machine import TERMINAL, IllegalTransition, RunState, check_transition

log = structlog.get_logger(__name__)

RUN_EVENTS_STREAM = "agent.runs"

# One DDL for both backends: only portable types.
_V1 = """
CREATE TABLE IF NOT EXISTS runs (
    run_id      TEXT PRIMARY KEY,
    creator     TEXT NOT NULL,
    request_id  TEXT,
    fingerprint TEXT NOT NULL,
    state       TEXT NOT NULL,
    snapshot    TEXT NOT NULL,
    UNIQUE (creator, request_id)
);
CREATE INDEX IF NOT EXISTS runs_by_state ON runs (state);
CREATE TABLE IF NOT EXISTS run_events (
    sequence BIGINT PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    run_id   TEXT NOT NULL,
    event    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS run_events_by_run ON run_events (run_id, sequence);
"""
# Files written before versioned migrations kept this version in PRAGMA user_version.
SCHEMA = Schema("agent.runs", (Migration(1, sqlite=_V1, postgresql=_V1),), legacy_table="runs")
# Appending transactions serialize on it (see the module docstring).
LOG_LOCK = "agent.run_events"
# Committed appends (and saga ends, see ``wake_watchers``) notify it, so watchers on every
# replica wake (LISTEN/NOTIFY on PostgreSQL).
LOG_CHANNEL = "agent_run_events"


class RunNotFound(LookupError):
    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"run {run_id!r} does not exist")


class RequestIdReused(ValueError):
    """An AIP-155 request id sent again with a different request."""


def event_from_run_event(event: RunEvent) -> Event:
    return Event(
        id=event.event_id,
        stream=RUN_EVENTS_STREAM,
        type=event.type,
        key=event.run_id,
        occurred_at=event.create_time,
        data={
            "sequence": event.sequence,
            "cause": event.cause,
            "from_state": str(event.from_state) if event.from_state else None,
            "to_state": str(event.to_state) if event.to_state else None,
            "run": event.run.to_dict(),
        },
    )


def run_event_from_event(event: Event) -> RunEvent:
    data = event.data
    return RunEvent(
        sequence=int(data["sequence"]),
        event_id=event.id,
        run_id=event.key,
        type=event.type,
        cause=str(data["cause"]),
        create_time=event.occurred_at,
        run=Run.from_dict(data["run"]),
        from_state=RunState(data["from_state"]) if data.get("from_state") else None,
        to_state=RunState(data["to_state"]) if data.get("to_state") else None,
    )


def _fingerprint(question: str, labels: Mapping[str, str], retrieval_filter: Mapping[str, str]) -> str:
    canonical = json.dumps([question, dict(labels), dict(retrieval_filter)], sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


class RunStore:
    def __init__(self, db: Database, outbox: Outbox) -> None:
        self.db = db
        self._outbox = outbox
        self._committed = asyncio.Event()

    async def create_schema(self) -> None:
        """Migrate (a database of another schema version is refused with what to do) and follow commits."""
        await self._outbox.create_schema()
        await self.db.migrate(SCHEMA)
        # Appends committed by other replicas wake this one's watchers too.
        await self.db.listen(LOG_CHANNEL, self._wake_watchers)

    # -- commands -------------------------------------------------------------------------

    async def create(
        self,
        *,
        question: str,
        creator: str = "",
        request_id: str = "",
        labels: Mapping[str, str] | None = None,
        retrieval_filter: Mapping[str, str] | None = None,
        start: bool = True,
    ) -> tuple[Run, bool]:
        """Create a run (IDLE, then PROCESSING when ``start``); returns it and whether it is new.

        The same ``request_id`` from the same creator returns the first run instead of a second,
        whichever replica takes it: the insert is conditional on the (creator, request_id) unique
        constraint, never a read followed by a write.
        """
        labels, retrieval_filter = dict(labels or {}), dict(retrieval_filter or {})
        fingerprint = _fingerprint(question, labels, retrieval_filter)
        if request_id:
            # A replay needs no write and no lock: answer it from the committed run. (A miss
            # decides nothing: the conditional INSERT below does.)
            found = await self.db.fetch_one(
                "SELECT fingerprint, snapshot FROM runs WHERE creator = :creator AND request_id = :request_id",
                {"creator": creator, "request_id": request_id},
            )
            if found is not None:
                if found[0] != fingerprint:
                    raise RequestIdReused(f"request_id {request_id!r} was already used for a different request")
                return Run.from_dict(json.loads(found[1])), False
        async with self.db.transaction() as tx:
            await tx.lock(LOG_LOCK)
            now = time.time()
            run = Run(
                run_id=f"run_{uuid.uuid4().hex}",
                question=question,
                state=RunState.IDLE,
                version=1,
                create_time=now,
                update_time=now,
                creator=creator,
                request_id=request_id,
                labels=labels,
                retrieval_filter=retrieval_filter,
            )
            inserted = await tx.execute(
                "INSERT INTO runs (run_id, creator, request_id, fingerprint, state, snapshot)"
                " VALUES (:run_id, :creator, :request_id, :fingerprint, :state, :snapshot)"
                " ON CONFLICT (creator, request_id) DO NOTHING RETURNING run_id",
                {
                    "run_id": run.run_id,
                    "creator": creator,
                    "request_id": request_id or None,
                    "fingerprint": fingerprint,
                    "state": str(run.state),
                    "snapshot": json.dumps(run.to_dict()),
                },
            )
            if inserted.first() is None:
                stored_fingerprint, existing = await self._by_request_id(tx, creator, request_id)
                if stored_fingerprint != fingerprint:
                    raise RequestIdReused(f"request_id {request_id!r} was already used for a different request")
                return existing, False
            await self._append(tx, run, EventType.CREATED, "run created", to_state=run.state)
            if start:
                run = await self._apply_transition(tx, run, RunState.PROCESSING, "admitted for execution", {})
            return run, True

    async def transition(
        self,
        run_id: str,
        to_state: RunState,
        *,
        cause: str,
        only_from: Iterable[RunState] | None = None,
        answer: str | None = None,
        citations: tuple[Citation, ...] | None = None,
        decided_by: str | None = None,
        status_reason: str | None = None,
    ) -> Run:
        """Move a run to ``to_state``, or raise ``IllegalTransition`` without changing anything.

        ``only_from`` narrows the table for one command: a review may only move a run that waits
        for review, although the table also allows, say, PROCESSING → COMPLETED.
        """
        async with self.db.transaction() as tx:
            await tx.lock(LOG_LOCK)
            run = await self._load(tx, run_id)
            if only_from is not None and run.state not in set(only_from):
                raise IllegalTransition(run.state, to_state)
            changes: dict[str, Any] = {}
            if status_reason is not None:
                changes["status_reason"] = status_reason
            if answer is not None:
                changes["answer"] = answer
            if citations is not None:
                changes["citations"] = citations
            if decided_by is not None:
                changes["decided_by"] = decided_by
            updated = await self._apply_transition(tx, run, to_state, cause, changes)
        log.info("run state changed", run_id=run_id, from_state=run.state, to_state=to_state, cause=cause)
        return updated

    async def append_step_event(self, tx: Transaction, run_id: str, *, step: str, cause: str) -> None:
        """Record a completed workflow step, inside the caller's (the saga log's) transaction."""
        await tx.lock(LOG_LOCK)
        run = await self._load(tx, run_id)
        if run.state in TERMINAL:
            return  # a step that finished after the run was cancelled: its last event stays the terminal one
        await self._append(tx, run, EventType.STEP_COMPLETED, f"{step}: {cause}")

    async def append_compensation_event(self, tx: Transaction, run_id: str, *, step: str) -> None:
        """Record a step's compensation, inside the saga log's transaction marking it compensated.

        Recorded after a terminal state too: a cancelled run is compensated after it is CANCELLED,
        and its page should still show what was undone.
        """
        await tx.lock(LOG_LOCK)
        run = await self._load(tx, run_id)
        await self._append(tx, run, EventType.STEP_COMPENSATED, f"{step}: compensated")

    async def _apply_transition(
        self, tx: Transaction, run: Run, to_state: RunState, cause: str, changes: Mapping[str, Any]
    ) -> Run:
        check_transition(run.state, to_state)
        # The cause explains a stopped or parked run; a running or completed one needs no reason.
        reason = "" if to_state in (RunState.PROCESSING, RunState.COMPLETED) else cause
        updated = replace(
            run,
            state=to_state,
            version=run.version + 1,
            update_time=time.time(),
            **({"status_reason": reason} | dict(changes)),
        )
        await tx.execute(
            "UPDATE runs SET state = :state, snapshot = :snapshot WHERE run_id = :run_id",
            {"state": str(updated.state), "snapshot": json.dumps(updated.to_dict()), "run_id": updated.run_id},
        )
        await self._append(tx, updated, EventType.STATE_CHANGED, cause, from_state=run.state, to_state=to_state)
        return updated

    async def _append(
        self,
        tx: Transaction,
        run: Run,
        event_type: str,
        cause: str,
        *,
        from_state: RunState | None = None,
        to_state: RunState | None = None,
    ) -> None:
        # Under LOG_LOCK, taken by every appending transaction before it touched anything.
        sequence = int((await tx.execute("SELECT coalesce(max(sequence), 0) + 1 FROM run_events")).scalar())
        event = event_from_run_event(
            RunEvent(
                sequence=sequence,
                event_id=uuid.uuid4().hex,
                run_id=run.run_id,
                type=event_type,
                cause=cause,
                create_time=time.time(),
                run=run,
                from_state=from_state,
                to_state=to_state,
            )
        )
        await tx.execute(
            "INSERT INTO run_events (sequence, event_id, run_id, event) VALUES (:sequence, :event_id, :run_id, :event)",
            {"sequence": sequence, "event_id": event.id, "run_id": run.run_id, "event": event.to_json()},
        )
        await self._outbox.append(tx, event)
        await tx.notify(LOG_CHANNEL)

    async def wake_watchers(self, tx: Transaction) -> None:
        """Once ``tx`` commits, wake the watchers on every replica (a change they wait for, not an event)."""
        await tx.notify(LOG_CHANNEL)

    def _wake_watchers(self) -> None:
        self._committed.set()
        self._committed = asyncio.Event()

    async def _load(self, tx: Transaction, run_id: str) -> Run:
        row = (await tx.execute("SELECT snapshot FROM runs WHERE run_id = :run_id", {"run_id": run_id})).first()
        if row is None:
            raise RunNotFound(run_id)
        return Run.from_dict(json.loads(row[0]))

    async def _by_request_id(self, tx: Transaction, creator: str, request_id: str) -> tuple[str, Run]:
        row = (
            await tx.execute(
                "SELECT fingerprint, snapshot FROM runs WHERE creator = :creator AND request_id = :request_id",
                {"creator": creator, "request_id": request_id},
            )
        ).first()
        assert row is not None, "ON CONFLICT said the row exists"
        return row[0], Run.from_dict(json.loads(row[1]))

    # -- reads of the write model (commands, recovery, WatchRun) -------------------------

    async def get(self, run_id: str) -> Run:
        row = await self.db.fetch_one("SELECT snapshot FROM runs WHERE run_id = :run_id", {"run_id": run_id})
        if row is None:
            raise RunNotFound(run_id)
        return Run.from_dict(json.loads(row[0]))

    async def run_ids_in(self, states: Iterable[RunState]) -> list[str]:
        wanted, params = in_list("state", [str(s) for s in states])
        rows = await self.db.fetch_all(f"SELECT run_id FROM runs WHERE state IN {wanted}", params)
        return [row[0] for row in rows]

    async def events(self, *, after: int = 0, run_id: str | None = None, limit: int = 500) -> list[RunEvent]:
        """Events with ``sequence > after`` in order, for one run or for all."""
        if run_id is None:
            rows = await self.db.fetch_all(
                "SELECT event FROM run_events WHERE sequence > :after ORDER BY sequence LIMIT :limit",
                {"after": after, "limit": limit},
            )
        else:
            rows = await self.db.fetch_all(
                "SELECT event FROM run_events WHERE run_id = :run_id AND sequence > :after ORDER BY sequence"
                " LIMIT :limit",
                {"run_id": run_id, "after": after, "limit": limit},
            )
        return [run_event_from_event(Event.from_json(row[0])) for row in rows]

    async def last_sequence(self) -> int:
        row = await self.db.fetch_one("SELECT coalesce(max(sequence), 0) FROM run_events")
        return int(row[0]) if row else 0

    def next_commit(self) -> asyncio.Event:
        """An event set by the next commit that appends to the log. Take it *before* reading."""
        return self._committed
