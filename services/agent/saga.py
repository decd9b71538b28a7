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

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import structlog

from runtime.database import Database, DatabaseUnavailable, Migration, Schema, Transaction

log = structlog.get_logger(__name__)

_V1 = """
CREATE TABLE IF NOT EXISTS sagas (
    saga_id     TEXT PRIMARY KEY,
    status      TEXT NOT NULL,
    error       TEXT NOT NULL DEFAULT '',
    updated_at  {real} NOT NULL,
    -- Lease: who executes the saga, until when. Another owner may take it over only after expiry.
    owner       TEXT NOT NULL DEFAULT '',
    lease_until {real} NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS sagas_unfinished ON sagas (status) WHERE status IN ('RUNNING', 'COMPENSATING');
CREATE TABLE IF NOT EXISTS saga_steps (
    saga_id    TEXT NOT NULL REFERENCES sagas (saga_id),
    position   INTEGER NOT NULL,
    name       TEXT NOT NULL,
    status     TEXT NOT NULL,
    result     TEXT,
    attempts   INTEGER NOT NULL DEFAULT 0,
    updated_at {real} NOT NULL,
    PRIMARY KEY (saga_id, name)
);
"""
SCHEMA = Schema(
    "agent.sagas",
    (Migration(1, sqlite=_V1.format(real="REAL"), postgresql=_V1.format(real="DOUBLE PRECISION")),),
)


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
        """Called inside the transaction that marks ``step`` done (or compensated), so its writes commit with it."""


class SettleListener(Protocol):
    async def __call__(self, tx: Transaction, saga_id: str) -> None:
        """Called inside the transaction that ends the saga (COMPLETED or COMPENSATED)."""


SETTLED = frozenset({SagaStatus.COMPLETED, SagaStatus.COMPENSATED})


class SagaLeased(Exception):
    """Another owner holds the saga's lease: it is executing it, or did until recently."""

    def __init__(self, saga_id: str, owner: str) -> None:
        self.owner = owner
        super().__init__(f"saga {saga_id} is leased by {owner!r}")


class SagaLog:
    """The persisted saga state, in the caller's database.

    Executing a saga takes a lease in ``owner``'s name, renewed by every step write and, while
    a step runs, every third of the lease (``keep_leased``). Replicas sharing the database
    therefore never execute one saga at once: taking the lease is one conditional UPDATE (only
    if free, expired or already ours), so of two replicas claiming an orphan exactly one wins.
    A process restarted under the same owner name takes its sagas back at once, while another
    owner waits for the lease (``lease_s``, longer than any single step) to expire.
    """

    def __init__(self, db: Database, *, owner: str = "", lease_s: float = 120.0) -> None:
        self.db = db
        self.owner = owner
        self._lease_s = lease_s

    async def create_schema(self) -> None:
        await self.db.migrate(SCHEMA)

    async def begin(self, saga_id: str) -> SagaStatus:
        """Create the saga if new and take its lease; raises ``SagaLeased`` if another owner holds it."""
        now = time.time()
        async with self.db.transaction() as tx:
            await tx.execute(
                "INSERT INTO sagas (saga_id, status, updated_at) VALUES (:saga_id, :status, :now)"
                " ON CONFLICT (saga_id) DO NOTHING",
                {"saga_id": saga_id, "status": str(SagaStatus.RUNNING), "now": now},
            )
            # One conditional UPDATE: PostgreSQL re-checks the condition on the row it locked, so
            # of several replicas taking an expired lease at once exactly one gets it.
            taken = await tx.execute(
                "UPDATE sagas SET owner = :owner, lease_until = :until"
                " WHERE saga_id = :saga_id AND status IN ('RUNNING', 'COMPENSATING')"
                " AND (owner = :owner OR lease_until <= :now) RETURNING status",
                {"owner": self.owner, "until": now + self._lease_s, "saga_id": saga_id, "now": now},
            )
            row = taken.first()
            if row is not None:
                return SagaStatus(row[0])
            row = (
                await tx.execute("SELECT status, owner FROM sagas WHERE saga_id = :saga_id", {"saga_id": saga_id})
            ).first()
            assert row is not None
            status = SagaStatus(row[0])
            if status in (SagaStatus.RUNNING, SagaStatus.COMPENSATING):
                raise SagaLeased(saga_id, row[1])
            return status

    async def _renew(self, tx: Transaction, saga_id: str) -> None:
        renewed = await tx.execute(
            "UPDATE sagas SET lease_until = :until WHERE saga_id = :saga_id AND owner = :owner",
            {"until": time.time() + self._lease_s, "saga_id": saga_id, "owner": self.owner},
        )
        if renewed.rowcount != 1:
            # Our lease expired and another owner took the saga over: it continues, we stop.
            owner = (
                await tx.execute("SELECT owner FROM sagas WHERE saga_id = :saga_id", {"saga_id": saga_id})
            ).scalar()
            raise SagaLeased(saga_id, owner or "")

    @contextlib.asynccontextmanager
    async def keep_leased(self, saga_id: str) -> AsyncIterator[None]:
        """Renew the lease every third of it while the block runs (a step slower than usual)."""

        async def renew_forever() -> None:
            while True:
                await asyncio.sleep(self._lease_s / 3)
                try:
                    async with self.db.transaction() as tx:
                        await self._renew(tx, saga_id)
                except DatabaseUnavailable:
                    log.warning("saga lease renewal failed; retrying", saga_id=saga_id)
                except SagaLeased:
                    return  # the step's own write will find out and stop

        renewal = asyncio.create_task(renew_forever(), name=f"lease {saga_id}")
        try:
            yield
        finally:
            renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewal

    async def status(self, saga_id: str) -> SagaStatus | None:
        row = await self.db.fetch_one("SELECT status FROM sagas WHERE saga_id = :saga_id", {"saga_id": saga_id})
        return SagaStatus(row[0]) if row else None

    async def settled(self, saga_id: str) -> bool:
        """True once nothing more will run for this saga: ended, or never begun."""
        status = await self.status(saga_id)
        return status is None or status in SETTLED

    async def outcome(self, saga_id: str) -> tuple[SagaStatus, str] | None:
        row = await self.db.fetch_one("SELECT status, error FROM sagas WHERE saga_id = :saga_id", {"saga_id": saga_id})
        return (SagaStatus(row[0]), row[1]) if row else None

    async def steps(self, saga_id: str) -> dict[str, tuple[StepStatus, Any, int]]:
        """Step name -> (status, result, attempts)."""
        rows = await self.db.fetch_all(
            "SELECT name, status, result, attempts FROM saga_steps WHERE saga_id = :saga_id ORDER BY position",
            {"saga_id": saga_id},
        )
        return {
            name: (StepStatus(status), json.loads(result) if result is not None else None, attempts)
            for name, status, result, attempts in rows
        }

    async def unfinished(self) -> list[str]:
        """Sagas to resume: this owner's, and those whose owner let the lease expire."""
        rows = await self.db.fetch_all(
            "SELECT saga_id FROM sagas WHERE status IN ('RUNNING', 'COMPENSATING')"
            " AND (owner = :owner OR lease_until < :now) ORDER BY updated_at",
            {"owner": self.owner, "now": time.time()},
        )
        return [row[0] for row in rows]

    async def mark_started(self, saga_id: str, position: int, name: str) -> None:
        async with self.db.transaction() as tx:
            await self._renew(tx, saga_id)
            await tx.execute(
                "INSERT INTO saga_steps (saga_id, position, name, status, attempts, updated_at)"
                " VALUES (:saga_id, :position, :name, :status, 1, :now)"
                " ON CONFLICT (saga_id, name) DO UPDATE SET status = excluded.status,"
                " attempts = saga_steps.attempts + 1, updated_at = excluded.updated_at",
                {
                    "saga_id": saga_id,
                    "position": position,
                    "name": name,
                    "status": str(StepStatus.STARTED),
                    "now": time.time(),
                },
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
                "UPDATE saga_steps SET status = :status, result = coalesce(:result, result), updated_at = :now"
                " WHERE saga_id = :saga_id AND name = :name",
                {
                    "status": str(status),
                    "result": None if result is None else json.dumps(result),
                    "now": time.time(),
                    "saga_id": saga_id,
                    "name": name,
                },
            )
            if listener is not None:
                await listener(tx, saga_id, name, result)

    async def set_status(
        self, saga_id: str, status: SagaStatus, *, error: str = "", on_settled: SettleListener | None = None
    ) -> None:
        async with self.db.transaction() as tx:
            await self._renew(tx, saga_id)
            if status in SETTLED:
                await tx.execute("UPDATE sagas SET lease_until = 0 WHERE saga_id = :saga_id", {"saga_id": saga_id})
            await tx.execute(
                "UPDATE sagas SET status = :status, error = CASE WHEN :error = '' THEN error ELSE :error END,"
                " updated_at = :now WHERE saga_id = :saga_id",
                {"status": str(status), "error": error, "now": time.time(), "saga_id": saga_id},
            )
            if status in SETTLED and on_settled is not None:
                await on_settled(tx, saga_id)


class SagaFailed(Exception):
    """Raised out of ``Saga.run`` when compensation itself could not finish (retried on restart)."""


class Saga:
    """One saga definition (an ordered list of steps) executed against a ``SagaLog``."""

    def __init__(
        self,
        saga_log: SagaLog,
        steps: Sequence[SagaStep],
        *,
        on_step_done: StepListener | None = None,
        on_step_compensated: StepListener | None = None,
        on_settled: SettleListener | None = None,
    ) -> None:
        names = [step.name for step in steps]
        if len(set(names)) != len(names):
            raise ValueError(f"saga step names must be unique: {names}")
        self._log = saga_log
        self._steps = tuple(steps)
        self._on_step_done = on_step_done
        # Told of each compensation that ran, in the transaction marking the step COMPENSATED: a
        # compensation retried after a crash is marked (and told) once, when it finally completes.
        self._on_step_compensated = on_step_compensated
        # Told when the saga ends, in that transaction: from then on it writes nothing more.
        self._on_settled = on_settled

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
                async with self._log.keep_leased(saga_id):
                    result = await step.action(context)
            except Exception as error:
                log.warning("saga step failed; compensating", saga_id=saga_id, step=step.name, error=str(error))
                await self._log.mark_step(saga_id, step.name, StepStatus.FAILED)
                outcome = await self.compensate(saga_id, reason=f"{step.name} failed: {error}")
                return SagaOutcome(outcome.status, outcome.results, outcome.error, failed_step=step.name)
            await self._log.mark_step(saga_id, step.name, StepStatus.DONE, result=result, listener=self._on_step_done)
            results[step.name] = result
        await self._log.set_status(saga_id, SagaStatus.COMPLETED, on_settled=self._on_settled)
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
            # Steps with nothing to undo are marked too, but there was no compensation to tell of.
            listener = self._on_step_compensated if step.compensation is not None else None
            await self._log.mark_step(saga_id, step.name, StepStatus.COMPENSATED, listener=listener)
        await self._log.set_status(saga_id, SagaStatus.COMPENSATED, on_settled=self._on_settled)
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
