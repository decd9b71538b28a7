"""The saga log: each saga's status, its steps as they start, complete and are compensated, and
who executes it (a lease), persisted in the caller's database.

``services.agent.saga`` runs sagas against it; this module only records. A process killed at
any point leaves the log saying exactly which steps completed, which were in flight, and who
held the saga, so another process (or the same one restarted) can resume or compensate it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, TypeGuard, runtime_checkable

import structlog

from runtime.database import (
    Database,
    DatabaseUnavailable,
    Dialect,
    Migration,
    Params,
    Result,
    Row,
    Schema,
    Transaction,
)

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


class StepListener(Protocol):
    async def __call__(self, tx: Transaction, saga_id: str, step: str, result: Any) -> None:
        """Called inside the transaction that marks ``step`` done (or compensated), so its writes commit with it."""


class SettleListener(Protocol):
    async def __call__(self, tx: Transaction, saga_id: str) -> None:
        """Called inside the transaction that ends the saga (COMPLETED or COMPENSATED)."""


@dataclass(frozen=True, slots=True)
class Fold:
    """A listener's writes folded into the saga log's one PostgreSQL statement.

    ``ctes(leased)`` gives them as data-modifying CTEs (``name AS (…)``, comma-separated) that
    write only where the SQL condition ``leased`` holds (the lease was renewed, so the saga's own
    write happened), with their parameters, named apart from the saga log's; ``on_commit`` runs
    once the statement has committed.
    """

    ctes: Callable[[str], tuple[str, Mapping[str, Any]]] | None = None
    on_commit: Callable[[], None] | None = None


@runtime_checkable
class FoldingStepListener(Protocol):
    """A ``StepListener`` that can also give its writes as a ``Fold``: on PostgreSQL the step's mark
    and those writes are then one statement (one round trip, no BEGIN and COMMIT)."""

    async def __call__(self, tx: Transaction, saga_id: str, step: str, result: Any) -> None: ...

    def fold(self, saga_id: str, step: str, result: Any) -> Fold: ...


@runtime_checkable
class FoldingSettleListener(Protocol):
    """A ``SettleListener`` that can also give its writes as a ``Fold`` (see ``FoldingStepListener``)."""

    async def __call__(self, tx: Transaction, saga_id: str) -> None: ...

    def fold(self, saga_id: str) -> Fold: ...


def _folds_steps(listener: Any) -> TypeGuard[FoldingStepListener]:
    return _implements(type(listener), FoldingStepListener)


def _folds_settling(listener: Any) -> TypeGuard[FoldingSettleListener]:
    return _implements(type(listener), FoldingSettleListener)


# Asked once per listener class: an isinstance check against a runtime-checkable protocol looks
# up every member each time, and each step of every run asks.
_IMPLEMENTS: dict[tuple[type, type], bool] = {}


def _implements(cls: type, protocol: type) -> bool:
    implements = _IMPLEMENTS.get((cls, protocol))
    if implements is None:
        implements = _IMPLEMENTS[(cls, protocol)] = issubclass(cls, protocol)
    return implements


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

    @property
    def lease_s(self) -> float:
        return self._lease_s

    async def create_schema(self) -> None:
        await self.db.migrate(SCHEMA)

    async def begin(self, saga_id: str) -> SagaStatus:
        """Create the saga if new and take its lease; raises ``SagaLeased`` if another owner holds it."""
        # One upsert, its own transaction: PostgreSQL re-checks the condition on the row it
        # locked, so of several replicas taking an expired lease at once exactly one gets it.
        row = (await self.db.execute(f"{_BEGIN} RETURNING status", self._begin_params(saga_id))).first()
        return await self._begun(saga_id, row)

    async def begin_first(self, saga_id: str, position: int, name: str) -> tuple[SagaStatus, bool]:
        """``begin``, marking step ``name`` (at ``position``) started if that created the saga.

        Returns the status and whether the saga was created (so it has no other step recorded). On
        PostgreSQL one statement; on SQLite ``begin`` alone (False: the caller reads the steps).
        """
        if self.db.dialect != "postgresql":
            return await self.begin(saga_id), False
        # xmax is 0 on a row the upsert inserted, and set on one it updated (locked).
        row = (
            await self.db.execute(
                f"WITH taken AS ({_BEGIN} RETURNING status, xmax = 0 AS created),"
                f" started AS ({_STARTED.format(leased='(SELECT created FROM taken)')})"
                " SELECT status, created FROM taken",
                self._begin_params(saga_id) | _started(position, name),
            )
        ).first()
        status = await self._begun(saga_id, row)
        return status, bool(row is not None and row[1])

    def _begin_params(self, saga_id: str) -> dict[str, Any]:
        now = time.time()
        return {
            "saga_id": saga_id,
            "status": str(SagaStatus.RUNNING),
            "now": now,
            "owner": self.owner,
            "until": now + self._lease_s,
        }

    async def _begun(self, saga_id: str, row: Row | None) -> SagaStatus:
        """The status ``begin`` found (its upsert's row), or ``SagaLeased`` if it took no lease."""
        if row is not None:
            return SagaStatus(row[0])
        row = await self.db.fetch_one("SELECT status, owner FROM sagas WHERE saga_id = :saga_id", {"saga_id": saga_id})
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
            await self._lost(tx, saga_id)

    async def _lost(self, tx: Transaction, saga_id: str) -> None:
        """Our lease expired and another owner took the saga over: it continues, we stop."""
        owner = (await tx.execute("SELECT owner FROM sagas WHERE saga_id = :saga_id", {"saga_id": saga_id})).scalar()
        raise SagaLeased(saga_id, owner or "")

    async def _renewed_with(
        self,
        tx: Transaction,
        saga_id: str,
        writes: list[str],
        params: Mapping[str, Any],
        fold: Fold | None = None,
        *,
        completes: bool = False,
    ) -> None:
        """Renew the lease and, only if that held, run ``writes`` (changes of saga_steps whose
        ``{leased}`` condition says "the renewal held"), and ``fold``'s.

        On PostgreSQL one statement (the renewal a data-modifying CTE the writes are conditioned
        on); on SQLite, with no such CTEs and no network, the renewal and then each write. With
        ``completes`` (PostgreSQL only) the renewal is instead the saga's end: COMPLETED, its lease
        let go, as ``set_status`` does.
        """
        values = {"until": time.time() + self._lease_s, "saga_id": saga_id, "owner": self.owner, **params}
        if tx.dialect != "postgresql":
            assert fold is None and not completes, "folds are PostgreSQL statements"
            await self._renew(tx, saga_id)
            for write in writes:
                await tx.execute(write.format(leased="1 = 1"), values)
            return
        leased = "EXISTS (SELECT 1 FROM renewed)"
        ctes = [f"write{n} AS ({write.format(leased=leased)})" for n, write in enumerate(writes)]
        if fold is not None and fold.ctes is not None:
            folded, folded_params = fold.ctes(leased)
            ctes.append(folded)
            values |= folded_params
        if completes:
            renewal = "status = :completed, updated_at = :completed_at, lease_until = 0"
            values |= {"completed": str(SagaStatus.COMPLETED), "completed_at": time.time()}
        else:
            renewal = "lease_until = :until"
        renewed = await tx.execute(
            f"WITH renewed AS (UPDATE sagas SET {renewal} WHERE saga_id = :saga_id AND owner = :owner"
            f" RETURNING saga_id), {', '.join(ctes)} SELECT count(*) FROM renewed",
            values,
        )
        if renewed.scalar() != 1:
            await self._lost(tx, saga_id)
        if fold is not None and fold.on_commit is not None:
            fold.on_commit()  # the statement was its own transaction: committed

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
        async with self._writing() as tx:
            await self._renewed_with(tx, saga_id, [_STARTED], _started(position, name))

    async def mark_step(
        self,
        saga_id: str,
        name: str,
        status: StepStatus,
        *,
        result: Any = None,
        listener: StepListener | None = None,
        start: tuple[int, str] | None = None,
        completes: bool = False,
        on_settled: SettleListener | None = None,
    ) -> None:
        """Mark step ``name`` ``status`` (telling ``listener`` in the same transaction) and, with
        ``start``, the step at that (position, name) as started: the next one, in the same write.

        ``completes``: it was the saga's last step to run; the saga is then COMPLETED (telling
        ``on_settled``) as by ``set_status``, on PostgreSQL by the same statement.
        """
        writes = [
            "UPDATE saga_steps SET status = :status, result = coalesce(:result, result), updated_at = :now"
            " WHERE saga_id = :saga_id AND name = :name AND {leased}"
        ]
        params: dict[str, Any] = {
            "status": str(status),
            "result": None if result is None else json.dumps(result),
            "now": time.time(),
            "name": name,
        }
        if start is not None:
            writes.append(_STARTED)
            params |= _started(*start)
        settles_folded = on_settled is None or _folds_settling(on_settled)
        if _folds_steps(listener) and self.db.dialect == "postgresql" and settles_folded:
            fold = listener.fold(saga_id, name, result)
            await self._renewed_with(_Autocommit(self.db), saga_id, writes, params, fold, completes=completes)
            if completes and _folds_settling(on_settled):
                self._settled_folded(on_settled, saga_id)
            return
        async with self._writing(alone=listener is None) as tx:
            await self._renewed_with(tx, saga_id, writes, params)
            if listener is not None:
                await listener(tx, saga_id, name, result)
        if completes:
            await self.set_status(saga_id, SagaStatus.COMPLETED, on_settled=on_settled)

    async def set_status(
        self, saga_id: str, status: SagaStatus, *, error: str = "", on_settled: SettleListener | None = None
    ) -> None:
        settles = status in SETTLED
        listener = on_settled if settles else None
        folded = _folds_settling(listener) and self.db.dialect == "postgresql"
        async with self._writing(alone=listener is None or folded) as tx:
            # The renewal and the change in one UPDATE: only the lease holder changes the status,
            # and a settled saga's lease is let go (nothing more runs for it).
            changed = await tx.execute(
                "UPDATE sagas SET status = :status, error = CASE WHEN :error = '' THEN error ELSE :error END,"
                " updated_at = :now, lease_until = :until WHERE saga_id = :saga_id AND owner = :owner",
                {
                    "status": str(status),
                    "error": error,
                    "now": time.time(),
                    "until": 0 if settles else time.time() + self._lease_s,
                    "saga_id": saga_id,
                    "owner": self.owner,
                },
            )
            if changed.rowcount != 1:
                await self._lost(tx, saga_id)
            if _folds_settling(listener) and folded:
                self._settled_folded(listener, saga_id)
            elif listener is not None:
                await listener(tx, saga_id)

    @staticmethod
    def _settled_folded(listener: FoldingSettleListener, saga_id: str) -> None:
        """Tell ``listener`` of a saga ended by one statement, committed by now."""
        fold = listener.fold(saga_id)
        assert fold.ctes is None, "a settle listener's fold carries no writes (the status UPDATE has no CTEs)"
        if fold.on_commit is not None:
            fold.on_commit()

    @contextlib.asynccontextmanager
    async def _writing(self, *, alone: bool = True) -> AsyncIterator[Transaction]:
        """Where a saga write runs: one statement ``alone`` on PostgreSQL needs no BEGIN and COMMIT
        (a statement is a transaction of its own there); otherwise a transaction."""
        if alone and self.db.dialect == "postgresql":
            yield _Autocommit(self.db)
            return
        async with self.db.transaction() as tx:
            yield tx


# Create the saga or take its lease: only if it is unsettled and ours or its lease expired.
_BEGIN = (
    "INSERT INTO sagas (saga_id, status, updated_at, owner, lease_until)"
    " VALUES (:saga_id, :status, :now, :owner, :until)"
    " ON CONFLICT (saga_id) DO UPDATE SET owner = excluded.owner, lease_until = excluded.lease_until"
    " WHERE sagas.status IN ('RUNNING', 'COMPENSATING')"
    " AND (sagas.owner = excluded.owner OR sagas.lease_until <= excluded.updated_at)"
)

# A step marked started (renewing the lease), on its own or folded into the previous step's mark.
_STARTED = (
    "INSERT INTO saga_steps (saga_id, position, name, status, attempts, updated_at)"
    " SELECT :saga_id, CAST(:started_position AS INTEGER), :started_name, :started_status, 1,"
    " CAST(:started_now AS DOUBLE PRECISION)"
    " WHERE {leased} ON CONFLICT (saga_id, name) DO UPDATE SET status = excluded.status,"
    " attempts = saga_steps.attempts + 1, updated_at = excluded.updated_at"
)


def _started(position: int, name: str) -> dict[str, Any]:
    return {
        "started_position": position,
        "started_name": name,
        "started_status": str(StepStatus.STARTED),
        "started_now": time.time(),
    }


class _Autocommit:
    """The ``Transaction`` face of single statements on PostgreSQL, each committed on its own."""

    dialect: Dialect = "postgresql"

    def __init__(self, db: Database) -> None:
        self._db = db

    async def execute(self, sql: str, params: Params | None = None) -> Result:
        return await self._db.execute(sql, params)

    def on_commit(self, callback: Callable[[], None]) -> None:
        raise TypeError("a single autocommitted statement has no commit to wait for")

    async def lock(self, name: str) -> None:
        raise TypeError("a lock outside a transaction would be released at once")

    async def lock_all(self, names: Sequence[str]) -> None:
        raise TypeError("a lock outside a transaction would be released at once")

    async def notify(self, channel: str) -> None:
        raise TypeError("notify within a transaction")
