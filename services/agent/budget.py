"""Tool budget: how many tool calls a caller's in-flight runs may hold at once.

A run reserves its tool calls before using any (the first saga step) and releases them when
it finishes or is compensated. Reservations are keyed by the saga step's idempotency key, so
reserving or releasing twice (a retry, a resume after a crash) changes nothing.
"""

from __future__ import annotations

import time

from runtime.sqlite import Database

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tool_budget_reservations (
    reservation_id TEXT PRIMARY KEY,
    owner          TEXT NOT NULL,
    units          INTEGER NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('HELD', 'RELEASED', 'SETTLED')),
    updated_at     REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS tool_budget_held ON tool_budget_reservations (owner) WHERE status = 'HELD';
"""


class BudgetExhausted(Exception):
    pass


class ToolBudget:
    def __init__(self, db: Database, *, max_units_per_owner: int) -> None:
        self._db = db
        self._limit = max_units_per_owner

    async def create_schema(self) -> None:
        await self._db.executescript(_SCHEMA)

    async def reserve(self, reservation_id: str, *, owner: str, units: int) -> None:
        async with self._db.transaction() as tx:
            cursor = await tx.execute(
                "SELECT 1 FROM tool_budget_reservations WHERE reservation_id = ?", (reservation_id,)
            )
            if await cursor.fetchone() is not None:
                return
            cursor = await tx.execute(
                "SELECT coalesce(sum(units), 0) FROM tool_budget_reservations WHERE owner = ? AND status = 'HELD'",
                (owner,),
            )
            row = await cursor.fetchone()
            held = int(row[0]) if row else 0
            if held + units > self._limit:
                raise BudgetExhausted(
                    f"tool budget of {owner or 'anonymous'!r} exhausted: {held} of {self._limit} calls held"
                    f" by in-flight runs, {units} more requested"
                )
            await tx.execute(
                "INSERT INTO tool_budget_reservations (reservation_id, owner, units, status, updated_at)"
                " VALUES (?, ?, ?, 'HELD', ?)",
                (reservation_id, owner, units, time.time()),
            )

    async def release(self, reservation_id: str) -> None:
        """Give a held reservation back (a compensation). No-op if absent or already closed."""
        await self._close(reservation_id, "RELEASED")

    async def settle(self, reservation_id: str) -> None:
        """Close a reservation whose calls were used (the run finished)."""
        await self._close(reservation_id, "SETTLED")

    async def _close(self, reservation_id: str, status: str) -> None:
        async with self._db.transaction() as tx:
            await tx.execute(
                "UPDATE tool_budget_reservations SET status = ?, updated_at = ?"
                " WHERE reservation_id = ? AND status = 'HELD'",
                (status, time.time(), reservation_id),
            )

    async def statuses(self, owner: str) -> dict[str, str]:
        rows = await self._db.fetch_all(
            "SELECT reservation_id, status FROM tool_budget_reservations WHERE owner = ?", (owner,)
        )
        return {row[0]: row[1] for row in rows}
