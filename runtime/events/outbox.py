"""Transactional outbox: events are stored in the same SQLite transaction as the change they describe,
then relayed to the bus.

So an event exists if and only if its change committed: a rolled-back transaction leaves no
outbox row, and a committed one cannot lose its event, because the relay retries every row
until the bus accepts it. A crash between "published" and "marked sent" republishes the
event, which consumers absorb by deduplicating on the event id.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog

from runtime.events.bus import Event, EventBus
from runtime.sqlite import Database, Transaction

log = structlog.get_logger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     TEXT NOT NULL UNIQUE,
    event        TEXT NOT NULL,
    published_at REAL
);
CREATE INDEX IF NOT EXISTS outbox_unpublished ON outbox (seq) WHERE published_at IS NULL;
"""


class Outbox:
    """Appends events inside a caller's transaction and wakes the relay once that commits."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._wakeup = asyncio.Event()

    async def create_schema(self) -> None:
        await self._db.executescript(_SCHEMA)

    async def append(self, tx: Transaction, event: Event) -> None:
        await tx.execute("INSERT INTO outbox (event_id, event) VALUES (?, ?)", (event.id, event.to_json()))
        tx.on_commit(self._wakeup.set)

    async def pending_count(self) -> int:
        row = await self._db.fetch_one("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        return int(row[0]) if row else 0

    async def relay_once(self, bus: EventBus, *, batch_size: int = 200) -> int:
        """Publish the oldest unsent events in order and mark them sent; returns how many."""
        rows = await self._db.fetch_all(
            "SELECT seq, event FROM outbox WHERE published_at IS NULL ORDER BY seq LIMIT ?", (batch_size,)
        )
        sent: list[int] = []
        try:
            for row in rows:
                await bus.publish(Event.from_json(row["event"]))
                sent.append(row["seq"])
        finally:
            # Marked even when a later publish failed, so those already out are not re-sent.
            if sent:
                async with self._db.transaction() as tx:
                    await tx.execute(
                        f"UPDATE outbox SET published_at = ? WHERE seq IN ({','.join('?' * len(sent))})",
                        (time.time(), *sent),
                    )
        return len(sent)

    async def prune(self, *, older_than: float) -> int:
        """Delete rows sent more than ``older_than`` seconds ago (the event log keeps history)."""
        async with self._db.transaction() as tx:
            cursor = await tx.execute(
                "DELETE FROM outbox WHERE published_at IS NOT NULL AND published_at < ?",
                (time.time() - older_than,),
            )
            return cursor.rowcount

    async def relay(
        self,
        bus: EventBus,
        *,
        poll_interval: float = 1.0,
        max_backoff: float = 10.0,
        retention: float = 3600.0,
    ) -> None:
        """Relay forever: woken by each commit that appended events, polling as a safety net.

        Polling also covers rows left by a previous process (crashed before relaying) and
        rows appended by another process sharing the file.
        """
        backoff = poll_interval
        last_prune = time.monotonic()
        while True:
            self._wakeup.clear()
            try:
                while await self.relay_once(bus) > 0:
                    pass
                backoff = poll_interval
            except Exception:
                log.warning("outbox relay failed; retrying", retry_in=backoff, exc_info=True)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, max_backoff)
                continue
            if time.monotonic() - last_prune > retention:
                await self.prune(older_than=retention)
                last_prune = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=poll_interval)
