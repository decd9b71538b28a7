"""Sagas with a persisted log: forward steps, and on failure their compensations in reverse order.

The log records each step as it starts, completes and is compensated, so a process killed
at any point can be picked up by ``Saga.run`` (resume forward) or ``Saga.compensate`` after
restart:
- a completed step is never run again; its stored result is handed to later steps;
- a step that had started but not completed when the process died is run again, so every
  action (and every compensation) must be idempotent by ``StepContext.key``;
- compensation covers completed steps and steps that were in flight at a crash, newest first.

A step that raises is treated as not applied (its own effect must be atomic), so it is not
compensated; the steps before it are.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import structlog

from runtime.sqlite import Database, Transaction

log = structlog.get_logger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sagas (
    saga_id     TEXT PRIMARY KEY,
    status      TEXT NOT NULL,
    error       TEXT NOT NULL DEFAULT '',
    updated_at  REAL NOT NULL,
    -- Lease: who executes the saga, until when. Another owner may take it over only after expiry.
    owner       TEXT NOT NULL DEFAULT '',
    lease_until REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS sagas_unfinished ON sagas (status) WHERE status IN ('RUNNING', 'COMPENSATING');
CREATE TABLE IF NOT EXISTS saga_steps (
    saga_id    TEXT NOT NULL REFERENCES sagas (saga_id),
    position   INTEGER NOT NULL,
    name       TEXT NOT NULL,
    status     TEXT NOT NULL,
    result     TEXT,
    attempts   INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL,
    PRIMARY KEY (saga_id, name)
);
"""


class SagaStatus(StrEnum):
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    COMPENSATING = "COMPENSATING"
    COMPENSATED = "COMPENSATED"


class StepStatus(StrEnum):
    STARTED = "STARTED"
    DONE = "DONE"
    FAILED = "FAILED"
    COMPENSATED = "COMPENSATED"


@dataclass(frozen=True, slots=True)
class StepContext:
    saga_id: str
    step: str
    # Results of the steps already completed, by step name.
    results: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Idempotency key of this step of this saga: the same on every retry and after restarts."""
        return f"{self.saga_id}:{self.step}"


Action = Callable[[StepContext], Awaitable[Any]]
Compensation = Callable[[StepContext, Any], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class SagaStep:
    name: str
    action: Action
    # None for steps with nothing to undo (reads, pure computation).
    compensation: Compensation | None = None


@dataclass(frozen=True, slots=True)
class SagaOutcome:
    status: SagaStatus
    results: Mapping[str, Any]
    error: str = ""
    failed_step: str = ""


class StepListener(Protocol):
    async def __call__(self, tx: Transaction, saga_id: str, step: str, result: Any) -> None:
        """Called inside the transaction that marks ``step`` done, so its writes commit with it."""


class SagaLeased(Exception):
    """Another owner holds the saga's lease: it is executing it, or did until recently."""

    def __init__(self, saga_id: str, owner: str) -> None:
        self.owner = owner
        super().__init__(f"saga {saga_id} is leased by {owner!r}")


class SagaLog:
    """The persisted saga state, in the caller's SQLite database.

    Executing a saga takes a lease in ``owner``'s name, renewed by every step write. Several
    processes sharing the database therefore never execute one saga at once, and a process
    restarted under the same owner name takes its sagas back at once, while another owner
    waits for the lease (``lease_s``, longer than any single step) to expire.
    """

    def __init__(self, db: Database, *, owner: str = "", lease_s: float = 120.0) -> None:
        self.db = db
        self.owner = owner
        self._lease_s = lease_s

    async def create_schema(self) -> None:
        await self.db.executescript(_SCHEMA)

    async def begin(self, saga_id: str) -> SagaStatus:
        """Create the saga if new and take its lease; raises ``SagaLeased`` if another owner holds it."""
        now = time.time()
        async with self.db.transaction() as tx:
            await tx.execute(
                "INSERT OR IGNORE INTO sagas (saga_id, status, updated_at) VALUES (?, ?, ?)",
                (saga_id, SagaStatus.RUNNING, now),
            )
            cursor = await tx.execute("SELECT status, owner, lease_until FROM sagas WHERE saga_id = ?", (saga_id,))
            row = await cursor.fetchone()
            assert row is not None
            status = SagaStatus(row[0])
            if status in (SagaStatus.RUNNING, SagaStatus.COMPENSATING):
                if row[1] != self.owner and row[2] > now:
                    raise SagaLeased(saga_id, row[1])
                await tx.execute(
                    "UPDATE sagas SET owner = ?, lease_until = ? WHERE saga_id = ?",
                    (self.owner, now + self._lease_s, saga_id),
                )
            return status

    async def _renew(self, tx: Transaction, saga_id: str) -> None:
        cursor = await tx.execute(
            "UPDATE sagas SET lease_until = ? WHERE saga_id = ? AND owner = ?",
            (time.time() + self._lease_s, saga_id, self.owner),
        )
        if cursor.rowcount != 1:
            # Our lease expired and another owner took the saga over: it continues, we stop.
            row = await (await tx.execute("SELECT owner FROM sagas WHERE saga_id = ?", (saga_id,))).fetchone()
            raise SagaLeased(saga_id, row[0] if row else "")

    async def status(self, saga_id: str) -> SagaStatus | None:
        row = await self.db.fetch_one("SELECT status FROM sagas WHERE saga_id = ?", (saga_id,))
        return SagaStatus(row[0]) if row else None

    async def outcome(self, saga_id: str) -> tuple[SagaStatus, str] | None:
        row = await self.db.fetch_one("SELECT status, error FROM sagas WHERE saga_id = ?", (saga_id,))
        return (SagaStatus(row[0]), row[1]) if row else None

    async def steps(self, saga_id: str) -> dict[str, tuple[StepStatus, Any, int]]:
        """Step name -> (status, result, attempts)."""
        rows = await self.db.fetch_all(
            "SELECT name, status, result, attempts FROM saga_steps WHERE saga_id = ? ORDER BY position",
            (saga_id,),
        )
        return {
            row["name"]: (
                StepStatus(row["status"]),
                json.loads(row["result"]) if row["result"] is not None else None,
                row["attempts"],
            )
            for row in rows
        }

    async def unfinished(self) -> list[str]:
        """Sagas to resume: this owner's, and those whose owner let the lease expire."""
        rows = await self.db.fetch_all(
            "SELECT saga_id FROM sagas WHERE status IN (?, ?) AND (owner = ? OR lease_until < ?) ORDER BY updated_at",
            (SagaStatus.RUNNING, SagaStatus.COMPENSATING, self.owner, time.time()),
        )
        return [row[0] for row in rows]

    async def mark_started(self, saga_id: str, position: int, name: str) -> None:
        async with self.db.transaction() as tx:
            await self._renew(tx, saga_id)
            await tx.execute(
                "INSERT INTO saga_steps (saga_id, position, name, status, attempts, updated_at)"
                " VALUES (?, ?, ?, ?, 1, ?)"
                " ON CONFLICT (saga_id, name) DO UPDATE SET status = excluded.status,"
                " attempts = attempts + 1, updated_at = excluded.updated_at",
                (saga_id, position, name, StepStatus.STARTED, time.time()),
            )

    async def mark_step(
        self,
        saga_id: str,
        name: str,
        status: StepStatus,
        *,
        result: Any = None,
        listener: StepListener | None = None,
    ) -> None:
        async with self.db.transaction() as tx:
            await self._renew(tx, saga_id)
            await tx.execute(
                "UPDATE saga_steps SET status = ?, result = coalesce(?, result), updated_at = ?"
                " WHERE saga_id = ? AND name = ?",
                (status, None if result is None else json.dumps(result), time.time(), saga_id, name),
            )
            if listener is not None:
                await listener(tx, saga_id, name, result)

    async def set_status(self, saga_id: str, status: SagaStatus, *, error: str = "") -> None:
        async with self.db.transaction() as tx:
            await self._renew(tx, saga_id)
            if status in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED):
                await tx.execute("UPDATE sagas SET lease_until = 0 WHERE saga_id = ?", (saga_id,))
            await tx.execute(
                "UPDATE sagas SET status = ?, error = CASE WHEN ? = '' THEN error ELSE ? END, updated_at = ?"
                " WHERE saga_id = ?",
                (status, error, error, time.time(), saga_id),
            )


class SagaFailed(Exception):
    """Raised out of ``Saga.run`` when compensation itself could not finish (retried on restart)."""


class Saga:
    """One saga definition (an ordered list of steps) executed against a ``SagaLog``."""

    def __init__(
        self, saga_log: SagaLog, steps: Sequence[SagaStep], *, on_step_done: StepListener | None = None
    ) -> None:
        names = [step.name for step in steps]
        if len(set(names)) != len(names):
            raise ValueError(f"saga step names must be unique: {names}")
        self._log = saga_log
        self._steps = tuple(steps)
        self._on_step_done = on_step_done

    async def run(self, saga_id: str) -> SagaOutcome:
        """Run (or resume) the saga; on a step failure compensate and return a COMPENSATED outcome."""
        status = await self._log.begin(saga_id)
        if status is SagaStatus.COMPENSATING:
            return await self.compensate(saga_id, reason="resuming an interrupted compensation")
        if status in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED):
            return await self._finished(saga_id)

        recorded = await self._log.steps(saga_id)
        results: dict[str, Any] = {}
        for position, step in enumerate(self._steps):
            if step.name in recorded and recorded[step.name][0] is StepStatus.DONE:
                results[step.name] = recorded[step.name][1]
                continue
            context = StepContext(saga_id, step.name, dict(results))
            await self._log.mark_started(saga_id, position, step.name)
            try:
                result = await step.action(context)
            except Exception as error:
                log.warning("saga step failed; compensating", saga_id=saga_id, step=step.name, error=str(error))
                await self._log.mark_step(saga_id, step.name, StepStatus.FAILED)
                outcome = await self.compensate(saga_id, reason=f"{step.name} failed: {error}")
                return SagaOutcome(outcome.status, outcome.results, outcome.error, failed_step=step.name)
            await self._log.mark_step(saga_id, step.name, StepStatus.DONE, result=result, listener=self._on_step_done)
            results[step.name] = result
        await self._log.set_status(saga_id, SagaStatus.COMPLETED)
        return SagaOutcome(SagaStatus.COMPLETED, results)

    async def compensate(self, saga_id: str, *, reason: str) -> SagaOutcome:
        """Undo completed (and crash-interrupted) steps, newest first. Safe to call again."""
        await self._log.begin(saga_id)
        await self._log.set_status(saga_id, SagaStatus.COMPENSATING, error=reason)
        recorded = await self._log.steps(saga_id)
        results = {name: result for name, (status, result, _) in recorded.items() if status is StepStatus.DONE}
        for step in reversed(self._steps):
            if step.name not in recorded:
                continue
            status, result, _ = recorded[step.name]
            if status not in (StepStatus.DONE, StepStatus.STARTED):
                continue
            if step.compensation is not None:
                try:
                    await step.compensation(StepContext(saga_id, step.name, results), result)
                except Exception as error:
                    # Left COMPENSATING: recovery retries the remaining compensations after restart.
                    log.error("saga compensation failed", saga_id=saga_id, step=step.name, exc_info=True)
                    raise SagaFailed(f"compensating {step.name} failed: {error}") from error
            await self._log.mark_step(saga_id, step.name, StepStatus.COMPENSATED)
        await self._log.set_status(saga_id, SagaStatus.COMPENSATED)
        outcome = await self._log.outcome(saga_id)
        return SagaOutcome(SagaStatus.COMPENSATED, results, error=outcome[1] if outcome else reason)

    async def _finished(self, saga_id: str) -> SagaOutcome:
        recorded = await self._log.steps(saga_id)
        outcome = await self._log.outcome(saga_id)
        assert outcome is not None
        status, error = outcome
        failed = next((name for name, (s, _, _) in recorded.items() if s is StepStatus.FAILED), "")
        results = {name: result for name, (s, result, _) in recorded.items() if s is StepStatus.DONE}
        return SagaOutcome(status, results, error, failed_step=failed)
