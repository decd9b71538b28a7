"""A test consumer's side effect: a per-event application counter, deduplicated in the same transaction."""

from __future__ import annotations

from runtime.database import Database, Migration, Schema
from runtime.events.bus import Event
from runtime.events.dedup import ProcessedEvents


class Ledger:
    def __init__(self, db: Database, *, consumer: str) -> None:
        self._db = db
        self._processed = ProcessedEvents(db, consumer=consumer)

    async def create_schema(self) -> None:
        await self._processed.create_schema()
        ddl = "CREATE TABLE IF NOT EXISTS applied (event_id TEXT PRIMARY KEY, times INTEGER NOT NULL)"
        await self._db.migrate(Schema("test.ledger", (Migration(1, ddl, ddl),)))

    async def apply(self, event: Event) -> None:
        async with self._db.transaction() as tx:
            if not await self._processed.claim(tx, event.id):
                return
            await tx.execute(
                "INSERT INTO applied (event_id, times) VALUES (:event_id, 1)"
                " ON CONFLICT (event_id) DO UPDATE SET times = applied.times + 1",
                {"event_id": event.id},
            )

    async def times_applied(self) -> dict[str, int]:
        rows = await self._db.fetch_all("SELECT event_id, times FROM applied")
        return {row[0]: row[1] for row in rows}
