"""A test consumer's side effect: a per-event application counter, deduplicated in the same transaction."""

from __future__ import annotations

from runtime.events.bus import Event
from runtime.events.dedup import ProcessedEvents
from runtime.sqlite import Database


class Ledger:
    def __init__(self, db: Database, *, consumer: str) -> None:
        self._db = db
        self._processed = ProcessedEvents(db, consumer=consumer)

    async def create_schema(self) -> None:
        await self._processed.create_schema()
        await self._db.executescript(
            "CREATE TABLE IF NOT EXISTS applied (event_id TEXT PRIMARY KEY, times INTEGER NOT NULL)"
        )

    async def apply(self, event: Event) -> None:
        async with self._db.transaction() as tx:
            if not await self._processed.claim(tx, event.id):
                return
            await tx.execute(
                "INSERT INTO applied (event_id, times) VALUES (?, 1)"
                " ON CONFLICT (event_id) DO UPDATE SET times = times + 1",
                (event.id,),
            )

    async def times_applied(self) -> dict[str, int]:
        rows = await self._db.fetch_all("SELECT event_id, times FROM applied")
        return {row["event_id"]: row["times"] for row in rows}
