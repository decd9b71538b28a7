"""Runs admitted but not yet begun, shared by the replicas: counted for admission, claimed by executors.

With ``AGENTMESH_AGENT_ROLE`` "serve" or "execute" the replica that admits a run is not the one
that executes it. The queue is then the database itself: a run is *unstarted* while it is IDLE or
PROCESSING and no saga was begun for it (the state ``RunStore.create`` leaves it in). Admission
counts those rows against the backlog bound; an executor claims some by beginning their sagas
in its name (the saga log's lease, the same one ``Saga.run`` takes and the orphaned-run takeover
checks), one statement for as many runs as it has free workers. The saga's primary key decides
races: of two executors claiming one run, exactly one inserts its saga. An executor killed after
claiming leaves leases that expire, and the takeover resumes those runs as it resumes any other.

Admissions are announced on ``ADMITTED_CHANNEL`` (this process's executor at once, the others by
NOTIFY on PostgreSQL); executors also poll, which is the only wake-up across processes sharing
an SQLite file.
"""

from __future__ import annotations

import asyncio
import math
import time

import structlog

from runtime.database import Announcer, Database, Wakeup, in_list
from services.agent.executor import ExecutorFull, RunExecutor
from services.agent.saga_log import SagaLog, SagaStatus
from services.agent.state_machine import RunState

log = structlog.get_logger(__name__)

ADMITTED_CHANNEL = "agent_runs_admitted"
_UNBEGUN_STATES, _UNBEGUN_PARAMS = in_list("state", [str(RunState.IDLE), str(RunState.PROCESSING)])
_UNSTARTED = f"r.state IN {_UNBEGUN_STATES} AND NOT EXISTS (SELECT 1 FROM sagas s WHERE s.saga_id = r.run_id)"
# Oldest first: the position of the run's first event (its creation), through the (run_id, version) index.
_ADMITTED_ORDER = "(SELECT e.position FROM run_events e WHERE e.run_id = r.run_id AND e.version = 1)"


class UnstartedRuns:
    """``count_fresh_s``: how long admission reuses a count of the unstarted runs (with this
    replica's admissions since added), so a burst of CreateRuns costs a count per that period, not
    one per call."""

    def __init__(self, db: Database, sagas: SagaLog, *, backlog: int, count_fresh_s: float = 0.1) -> None:
        self._db = db
        self._sagas = sagas
        self.backlog = backlog
        self._count_fresh_s = count_fresh_s
        self._announcer = Announcer(db, ADMITTED_CHANNEL)
        self._counting: asyncio.Future[tuple[int, float, int]] | None = None
        # The last count: unstarted runs, when it began (monotonic), this replica's admissions then.
        self._counted: tuple[int, float, int] = (0, -math.inf, 0)
        self._admissions = 0
        # Woken by an admission, a worker coming free, or the listener (re)connecting.
        self._wakeup = Wakeup(db, ADMITTED_CHANNEL)
        self._wakes_on_free = False

    # -- admission (any role but "all") ------------------------------------------------------

    async def count(self) -> int:
        """How many runs no executor has begun."""
        row = await self._db.fetch_one(f"SELECT count(*) FROM runs r WHERE {_UNSTARTED}", _UNBEGUN_PARAMS)
        return int(row[0]) if row else 0

    async def _recount(self) -> tuple[int, float, int]:
        began, admissions = time.monotonic(), self._admissions
        counted = (await self.count(), began, admissions)
        self._counted = max(self._counted, counted, key=lambda c: c[1])
        return counted

    async def check_room(self) -> None:
        """Raise ``ExecutorFull`` when the shared backlog is full.

        Against a count at most ``count_fresh_s`` old (callers arriving while it is taken share it)
        plus this replica's admissions since: the bound is soft by what other replicas admitted in
        that time. It keeps the queue of unstarted runs bounded; it is not an exact quota.
        """
        unstarted, counted_at, admissions = self._counted
        if time.monotonic() - counted_at > self._count_fresh_s:
            if self._counting is None or self._counting.done():
                self._counting = asyncio.ensure_future(self._recount())
            unstarted, _, admissions = await asyncio.shield(self._counting)
        if unstarted + self._admissions - admissions >= self.backlog:
            raise ExecutorFull(self.backlog, slots="runs waiting for an executor")

    def admitted(self) -> None:
        """A run was admitted (committed): counted, and the executors woken."""
        self._admissions += 1
        self._announcer.committed()

    async def announce(self) -> None:
        """Forever: tell the other processes' executors of this one's admissions (a background loop)."""
        await self._announcer.announce()

    # -- claiming (role "execute") ------------------------------------------------------------

    async def claim(self, limit: int) -> list[str]:
        """Begin the sagas of up to ``limit`` unstarted runs, oldest first, in this executor's name."""
        now = time.time()
        # SKIP LOCKED: executors claiming at once take different runs instead of queueing on the
        # same rows (the insert's ON CONFLICT would make all but one come away empty).
        lock = " FOR UPDATE OF r SKIP LOCKED" if self._db.dialect == "postgresql" else ""
        claimed = await self._db.execute(
            "INSERT INTO sagas (saga_id, status, updated_at, owner, lease_until)"
            " SELECT r.run_id, :status, :now, :owner, :until FROM runs r"
            f" WHERE {_UNSTARTED} ORDER BY {_ADMITTED_ORDER} LIMIT :limit{lock}"
            " ON CONFLICT (saga_id) DO NOTHING RETURNING saga_id",
            {
                **_UNBEGUN_PARAMS,
                "status": str(SagaStatus.RUNNING),
                "now": now,
                "owner": self._sagas.owner,
                "until": now + self._sagas.lease_s,
                "limit": limit,
            },
        )
        return [row[0] for row in claimed.rows]

    async def feed(self, executor: RunExecutor, *, poll_s: float) -> None:
        """Forever: keep ``executor``'s free workers busy with claimed runs (a background loop).

        Woken by an admission (here or, by NOTIFY, on another replica), by a worker coming free,
        and every ``poll_s`` in case a wake-up was missed.
        """
        if not self._wakes_on_free:  # once per process: a restarted loop keeps the callback
            self._wakes_on_free = True
            executor.on_free(self._wakeup.set)
        while True:
            free = executor.free
            if free:
                for run_id in await self.claim(free):
                    executor.resume(run_id)
            await self._wakeup.wait(poll_s)
