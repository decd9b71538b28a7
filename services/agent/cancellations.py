"""CancelRun on one replica interrupting the run's execution on another.

A cancelled run is CANCELLED in the shared database at once, but the workflow executing it does
not read its run again before each step (the record step's transition would refuse it, but only
after the retrieval and the decision, which can take as long as ``decision_timeout_s``). So every
cancel is announced on
``CANCELLED_CHANNEL`` (this process at once, the others by NOTIFY on PostgreSQL), and each executor
then looks up which of the runs it is executing were cancelled and interrupts them: they
compensate what they had done, as a run cancelled on the replica executing it does.
"""

from __future__ import annotations

from runtime.database import Announcer, Wakeup, in_list
from services.agent.executor import RunExecutor
from services.agent.run_store import RunStore
from services.agent.state_machine import RunState

CANCELLED_CHANNEL = "agent_runs_cancelled"


class Cancellations:
    def __init__(self, store: RunStore) -> None:
        self._store = store
        self._announcer = Announcer(store.db, CANCELLED_CHANNEL)
        self._wakeup = Wakeup(store.db, CANCELLED_CHANNEL)

    def cancelled(self) -> None:
        """A run was cancelled (committed): tell the executors."""
        self._announcer.committed()

    async def announce(self) -> None:
        """Forever: tell the other processes of this one's cancels (a background loop)."""
        await self._announcer.announce()

    async def follow(self, executor: RunExecutor, *, poll_s: float) -> None:
        """Forever: interrupt ``executor``'s runs that were cancelled anywhere (a background loop).

        On SQLite, processes sharing its file cannot notify each other: there it also looks every
        ``poll_s`` (a query only while it executes runs; on PostgreSQL the listener's reconnects
        cover missed notifications).
        """
        timeout_s = None if self._store.db.dialect == "postgresql" else poll_s
        while True:
            await self._wakeup.wait(timeout_s)
            executing = executor.executing
            if not executing:
                continue
            ids, params = in_list("run", executing)
            rows = await self._store.db.fetch_all(
                f"SELECT run_id FROM runs WHERE run_id IN {ids} AND state = :cancelled",
                {**params, "cancelled": str(RunState.CANCELLED)},
            )
            for row in rows:
                executor.cancel(row[0])
