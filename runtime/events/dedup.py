"""Effectively-once handling on top of at-least-once delivery: remember which event ids were applied.

The durable form (``ProcessedEvents``) records the id inside the handler's own transaction,
so "applied" and "remembered as applied" commit together: a redelivered event after a crash
is either fully applied already (and skipped) or not applied at all (and applied now).
``deduplicate`` is the in-memory form for handlers whose effects are themselves idempotent
or not persisted; it suppresses duplicates within one process lifetime.
"""

from __future__ import annotations

import time

from bounded.lru import LRUCache
from runtime.database import Database, Migration, Schema, Transaction, in_list
from runtime.events.bus import Event, Handler

_V1 = """
CREATE TABLE IF NOT EXISTS processed_events (
    consumer    TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    recorded_at {real} NOT NULL,
    PRIMARY KEY (consumer, event_id)
){without_rowid};
CREATE INDEX IF NOT EXISTS processed_events_age ON processed_events (consumer, recorded_at);
"""
SCHEMA = Schema(
    "events.processed",
    (
        Migration(
            1,
            sqlite=_V1.format(real="REAL", without_rowid=" WITHOUT ROWID"),
            postgresql=_V1.format(real="DOUBLE PRECISION", without_rowid=""),
        ),
    ),
)


class ProcessedEvents:
    """Durable event-id ledger per consumer, written in the caller's transaction."""

    def __init__(self, db: Database, *, consumer: str) -> None:
        self._db = db
        self._consumer = consumer

    async def create_schema(self) -> None:
        await self._db.migrate(SCHEMA)

    async def claim(self, tx: Transaction, event_id: str) -> bool:
        """Record ``event_id`` as applied; False if it already was (the caller then skips it)."""
        claimed = await tx.execute(
            "INSERT INTO processed_events (consumer, event_id, recorded_at) VALUES (:consumer, :event_id, :now)"
            " ON CONFLICT DO NOTHING",
            {"consumer": self._consumer, "event_id": event_id, "now": time.time()},
        )
        return claimed.rowcount == 1

    async def claim_all(self, tx: Transaction, event_ids: list[str]) -> set[str]:
        """Record every id of ``event_ids`` as applied, in one statement; returns those that were not yet.

        In sorted order, so two transactions claiming overlapping sets wait for each other
        instead of deadlocking.
        """
        if not event_ids:
            return set()
        ordered = sorted(set(event_ids))
        params = {"consumer": self._consumer, "now": time.time()}
        if tx.dialect == "postgresql":
            # One array parameter: one statement text (prepared once per connection) whatever the
            # batch size, where a VALUES row per id made a new text for nearly every batch.
            rows = "SELECT :consumer, event_id, :now FROM unnest(CAST(:ids AS TEXT[])) AS event_id"
            params["ids"] = ordered
        else:
            rows = "VALUES " + ", ".join(f"(:consumer, :e{n}, :now)" for n in range(len(ordered)))
            params |= {f"e{n}": e for n, e in enumerate(ordered)}
        claimed = await tx.execute(
            f"INSERT INTO processed_events (consumer, event_id, recorded_at) {rows}"
            " ON CONFLICT DO NOTHING RETURNING event_id",
            params,
        )
        return {row[0] for row in claimed.rows}

    async def applied(self, event_ids: list[str]) -> set[str]:
        """Those of ``event_ids`` already recorded (read outside any transaction: a hint, not a claim)."""
        if not event_ids:
            return set()
        if self._db.dialect == "postgresql":
            wanted, params = "= ANY(CAST(:ids AS TEXT[]))", {"ids": list(event_ids)}
        else:
            marks, params = in_list("e", event_ids)
            wanted = f"IN {marks}"
        rows = await self._db.fetch_all(
            f"SELECT event_id FROM processed_events WHERE consumer = :consumer AND event_id {wanted}",
            {"consumer": self._consumer, **params},
        )
        return {row[0] for row in rows}

    async def prune(self, *, older_than: float) -> int:
        """Forget ids recorded more than ``older_than`` seconds ago.

        Redelivery happens within minutes (claim idle time, relay retries), so a retention of
        hours keeps every duplicate that can still arrive while bounding the ledger.
        """
        async with self._db.transaction() as tx:
            pruned = await tx.execute(
                "DELETE FROM processed_events WHERE consumer = :consumer AND recorded_at < :before",
                {"consumer": self._consumer, "before": time.time() - older_than},
            )
            return pruned.rowcount

    async def forget_all(self, tx: Transaction) -> None:
        """Drop the ledger, for a consumer that rebuilds its state from scratch."""
        await tx.execute("DELETE FROM processed_events WHERE consumer = :consumer", {"consumer": self._consumer})


def deduplicate(handler: Handler, *, capacity: int = 100_000) -> Handler:
    """Wrap ``handler`` so an event id seen in the last ``capacity`` events is handled once."""
    seen: LRUCache[str, bool] = LRUCache(capacity)

    async def handle_once(event: Event) -> None:
        if seen.get(event.id):  # a duplicate, now the most recently seen
            return
        await handler(event)
        # Only after success: a failed attempt must stay eligible for redelivery.
        seen[event.id] = True

    return handle_once
