"""Following the shared store: the loop that keeps a replica's indexes in step, and its metrics.

Each replica serves searches from its own indexes and follows the store's generation. Staleness
is measured per catch-up: the time from the commit of the oldest change it brings in (its
``committed_at``, written by the committing replica) to the moment searches here see it.
Replicas on different hosts compare wall clocks, so the figure includes their clock skew (NTP
keeps that to milliseconds).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog
from prometheus_client import CollectorRegistry, Gauge, Histogram

from runtime.backoff import Backoff
from runtime.database import Database, DatabaseUnavailable
from runtime.supervisor import Outage, SupervisedLoop
from services.rag.store import GENERATION_CHANNEL

_log = structlog.get_logger(__name__)

STALENESS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class FollowingMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.staleness = Histogram(
            "agentmesh_rag_snapshot_staleness_seconds",
            "From the commit of a change (on any replica) until this replica's searches see it.",
            buckets=STALENESS_BUCKETS,
            registry=registry,
        )
        self.generation = Gauge(
            "agentmesh_rag_snapshot_generation",
            "Store generation this replica's search indexes reflect.",
            registry=registry,
        )
        # While the database is unreachable nothing can be measured against it; this says how
        # long ago the indexes were last known to be current (alert on time() minus it).
        self.confirmed = Gauge(
            "agentmesh_rag_snapshot_confirmed_timestamp_seconds",
            "When this replica last found its indexes at the store's latest generation (Unix time).",
            registry=registry,
        )

    def caught_up(self) -> None:
        self.confirmed.set_to_current_time()

    def applied(self, generation: int, *, lag_s: float | None) -> None:
        self.generation.set(generation)
        if lag_s is not None:
            self.staleness.observe(max(lag_s, 0.0))


class StoreFollower:
    """Runs ``catch_up`` whenever the store may have moved: at each commit's notification (every
    replica's, on PostgreSQL: LISTEN/NOTIFY) and every ``poll_s`` regardless, in case one was lost."""

    def __init__(self, db: Database, catch_up: Callable[[], Awaitable[None]], describe: Callable[[], str]) -> None:
        self._db = db
        self._catch_up = catch_up
        self._describe = describe
        self.wake = asyncio.Event()
        self._listening = False

    def loop(self, *, poll_s: float, backoff: Backoff | None = None) -> SupervisedLoop:
        """Following as a supervised loop (not started). While the database is down, searches
        keep being served from the indexes as they are, and the loop retries with backoff."""
        loop = SupervisedLoop(
            "store follower",
            lambda: self._follow(poll_s, loop),
            backoff=backoff or Backoff(initial=0.2, maximum=5.0),
            outage=Outage((DatabaseUnavailable,), "rag.follower.database_unavailable", self._unavailable),
        )
        return loop

    async def _follow(self, poll_s: float, loop: SupervisedLoop) -> None:
        if not self._listening:
            await self._db.listen(GENERATION_CHANNEL, self.wake.set)
            self._listening = True
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation that
            # arrives as the wake-up does, and the loop would outlive its supervisor's stop().
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(poll_s):
                    await self.wake.wait()
            self.wake.clear()
            await self._catch_up()
            loop.mark_healthy()

    def _unavailable(self, _error: Exception) -> dict[str, str]:
        self.wake.set()  # the retry catches up at once, not a poll period later
        return {"serving": self._describe()}
