"""Effectively-once handling on top of at-least-once delivery: remember which event ids were applied.

The durable form (``ProcessedEvents``) records the id inside the handler's own transaction,
so "applied" and "remembered as applied" commit together: a redelivered event after a crash
is either fully applied already (and skipped) or not applied at all (and applied now).
``deduplicate`` is the in-memory form for handlers whose effects are themselves idempotent
or not persisted; it suppresses duplicates within one process lifetime.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from runtime.events.bus import Event, Handler
from runtime.sqlite import Database, Transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS processed_events (
    consumer    TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    recorded_at REAL NOT NULL,
    PRIMARY KEY (consumer, event_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS processed_events_age ON processed_events (consumer, recorded_at);
"""


class ProcessedEvents:
    """Durable event-id ledger per consumer, written in the caller's transaction."""

    def __init__(self, db: Database, *, consumer: str) -> None:
        self._db = db
        self._consumer = consumer

    async def create_schema(self) -> None:
        await self._db.executescript(_SCHEMA)

    async def claim(self, tx: Transaction, event_id: str) -> bool:
        """Record ``event_id`` as applied; False if it already was (the caller then skips it)."""
        cursor = await tx.execute(
            "INSERT OR IGNORE INTO processed_events (consumer, event_id, recorded_at) VALUES (?, ?, ?)",
            (self._consumer, event_id, time.time()),
        )
        return cursor.rowcount == 1

    async def prune(self, *, older_than: float) -> int:
        """Forget ids recorded more than ``older_than`` seconds ago.

        Redelivery happens within minutes (claim idle time, relay retries), so a retention of
        hours keeps every duplicate that can still arrive while bounding the ledger.
        """
        async with self._db.transaction() as tx:
            cursor = await tx.execute(
                "DELETE FROM processed_events WHERE consumer = ? AND recorded_at < ?",
                (self._consumer, time.time() - older_than),
            )
            return cursor.rowcount

    async def forget_all(self, tx: Transaction) -> None:
        """Drop the ledger, for a consumer that rebuilds its state from scratch."""
        await tx.execute("DELETE FROM processed_events WHERE consumer = ?", (self._consumer,))


def deduplicate(handler: Handler, *, capacity: int = 100_000) -> Handler:
    """Wrap ``handler`` so an event id seen in the last ``capacity`` events is handled once."""
    seen: OrderedDict[str, None] = OrderedDict()

    async def handle_once(event: Event) -> None:
        if event.id in seen:
            seen.move_to_end(event.id)
            return
        await handler(event)
        # Only after success: a failed attempt must stay eligible for redelivery.
        seen[event.id] = None
        if len(seen) > capacity:
            seen.popitem(last=False)

    return handle_once
