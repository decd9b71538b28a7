"""How far behind the shared store a replica's searches are, as Prometheus metrics.

Each replica serves searches from its in-memory snapshot and follows the store's generation
(``KnowledgeBase.follow``). Staleness is measured per swap: the time from the commit of the
oldest change a new snapshot brings in (its ``committed_at``, written by the committing
replica) to the moment the snapshot went live here. Replicas on different hosts compare wall
clocks, so the figure includes their clock skew (NTP keeps that to milliseconds).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, Histogram

STALENESS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class FollowerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.staleness = Histogram(
            "agentmesh_rag_snapshot_staleness_seconds",
            "From the commit of a change (on any replica) until this replica's searches see it.",
            buckets=STALENESS_BUCKETS,
            registry=registry,
        )
        self.generation = Gauge(
            "agentmesh_rag_snapshot_generation",
            "Store generation the live search snapshot reflects.",
            registry=registry,
        )
        # While the database is unreachable nothing can be measured against it; this says how
        # long ago the snapshot was last known to be current (alert on time() minus it).
        self.confirmed = Gauge(
            "agentmesh_rag_snapshot_confirmed_timestamp_seconds",
            "When this replica last found its snapshot at the store's latest generation (Unix time).",
            registry=registry,
        )

    def caught_up(self) -> None:
        self.confirmed.set_to_current_time()

    def snapshot_live(self, generation: int, *, lag_s: float | None) -> None:
        self.generation.set(generation)
        if lag_s is not None:
            self.staleness.observe(max(lag_s, 0.0))
