"""Transactional outbox: events are stored in the same transaction as the change they describe,
then relayed to the bus.

So an event exists if and only if its change committed: a rolled-back transaction leaves no
outbox row, and a committed one cannot lose its event, because the relay retries every row
until the bus accepts it. A crash between "published" and "marked sent" republishes the
event, which consumers absorb by deduplicating on the event id.

Replicas sharing a PostgreSQL database all relay: each takes a batch with ``FOR UPDATE SKIP
LOCKED``, so a row is published by one replica (and the others take the next rows meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog

from runtime.database import Database, Migration, Schema, Transaction, in_list
from runtime.events.bus import Event, EventBus

log = structlog.get_logger(__name__)

_V1 = """
CREATE TABLE IF NOT EXISTS outbox (
    seq          {serial},
    event_id     TEXT NOT NULL UNIQUE,
    event        TEXT NOT NULL,
    published_at {real}
);
CREATE INDEX IF NOT EXISTS outbox_unpublished ON outbox (seq) WHERE published_at IS NULL;
"""
SCHEMA = Schema(
    "events.outbox",
    (
        Migration(
            1,
            sqlite=_V1.format(serial="INTEGER PRIMARY KEY AUTOINCREMENT", real="REAL"),
            postgresql=_V1.format(serial="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", real="DOUBLE PRECISION"),
        ),
    ),
)
_UNSENT = "SELECT seq, event FROM outbox WHERE published_at IS NULL ORDER BY seq LIMIT :limit"


class Outbox:
    """Appends events inside a caller's transaction and wakes the relay once that commits."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._wakeup = asyncio.Event()

    async def create_schema(self) -> None:
        await self._db.migrate(SCHEMA)

    async def append(self, tx: Transaction, event: Event) -> None:
        await tx.execute(
            "INSERT INTO outbox (event_id, event) VALUES (:event_id, :event)",
            {"event_id": event.id, "event": event.to_json()},
        )
        tx.on_commit(self._wakeup.set)

    @staticmethod
    def insert_select(select: str) -> str:
        """The INSERT appending the rows of ``select`` (event id, event JSON), for a caller that
        folds it into a statement of its own (a PostgreSQL data-modifying CTE); ``wake`` after it commits.
        """
        return f"INSERT INTO outbox (event_id, event) {select}"

    def wake(self) -> None:
        """Events were appended outside ``append`` and have committed: relay them now."""
        self._wakeup.set()

    async def pending_count(self) -> int:
        row = await self._db.fetch_one("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        return int(row[0]) if row else 0

    async def relay_once(self, bus: EventBus, *, batch_size: int = 200) -> int:
        """Publish the oldest unsent events in order and mark them sent; returns how many."""
        if self._db.dialect == "postgresql":
            return await self._relay_locked(bus, batch_size)
        # SQLite: this process is the file's only writer, hence its only relay; publishing
        # outside the write transaction keeps the writer free meanwhile.
        rows = await self._db.fetch_all(_UNSENT, {"limit": batch_size})
        sent: list[int] = []
        try:
            for seq, event in rows:
                await bus.publish(Event.from_json(event))
                sent.append(seq)
        finally:
            # Marked even when a later publish failed, so those already out are not re-sent.
            if sent:
                async with self._db.transaction() as tx:
                    await self._mark_sent(tx, sent)
        return len(sent)

    async def _relay_locked(self, bus: EventBus, batch_size: int) -> int:
        # The rows stay locked until COMMIT, so no other replica publishes them meanwhile.
        sent: list[int] = []
        failure: Exception | None = None
        async with self._db.transaction() as tx:
            rows = (await tx.execute(_UNSENT + " FOR UPDATE SKIP LOCKED", {"limit": batch_size})).rows
            for seq, event in rows:
                try:
                    await bus.publish(Event.from_json(event))
                except Exception as error:
                    failure = error
                    break
                sent.append(seq)
            # Committed even when a later publish failed, so those already out are not re-sent.
            if sent:
                await self._mark_sent(tx, sent)
        if failure is not None:
            raise failure
        return len(sent)

    @staticmethod
    async def _mark_sent(tx: Transaction, seqs: list[int]) -> None:
        if tx.dialect == "postgresql":
            # One array parameter: one statement text (prepared once per connection) whatever the
            # batch size; an IN list made a new one for nearly every batch.
            wanted, params = "= ANY(CAST(:seqs AS BIGINT[]))", {"seqs": seqs}
        else:
            marks, params = in_list("seq", seqs)
            wanted = f"IN {marks}"
        await tx.execute(f"UPDATE outbox SET published_at = :now WHERE seq {wanted}", {"now": time.time(), **params})

    async def prune(self, *, older_than: float) -> int:
        """Delete rows sent more than ``older_than`` seconds ago (the event log keeps history)."""
        async with self._db.transaction() as tx:
            pruned = await tx.execute(
                "DELETE FROM outbox WHERE published_at IS NOT NULL AND published_at < :before",
                {"before": time.time() - older_than},
            )
            return pruned.rowcount

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
                async with asyncio.timeout(poll_interval):
                    await self._wakeup.wait()
