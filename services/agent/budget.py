"""Tool budget: how many tool calls a caller's in-flight runs may hold at once.

A run reserves its tool calls before using any (the first saga step) and releases them when
it finishes or is compensated. Reservations are keyed by the saga step's idempotency key, so
reserving or releasing twice (a retry, a resume after a crash) changes nothing. The check
(sum held, then insert) runs under a per-caller lock, so replicas reserving for one caller at
once cannot both pass it.
"""

from __future__ import annotations

import time

from runtime.database import Database, Migration, Schema, lock_key

_V1 = """
CREATE TABLE IF NOT EXISTS tool_budget_reservations (
    reservation_id TEXT PRIMARY KEY,
    owner          TEXT NOT NULL,
    units          INTEGER NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('HELD', 'RELEASED', 'SETTLED')),
    updated_at     {real} NOT NULL
);
CREATE INDEX IF NOT EXISTS tool_budget_held ON tool_budget_reservations (owner) WHERE status = 'HELD';
"""
# PostgreSQL: the reservation as one function, so it costs one round trip instead of five (BEGIN,
# lock, read, insert, COMMIT) through a hop to the database. A VOLATILE function takes a fresh
# snapshot for each statement it runs, so the reads below see every reservation committed before
# the lock was granted, as the same statements in a transaction would.
_V2_POSTGRESQL = """
CREATE OR REPLACE FUNCTION agent_tool_budget_reserve(
    lock_key BIGINT, p_reservation_id TEXT, p_owner TEXT, p_units INTEGER, p_limit INTEGER, p_now DOUBLE PRECISION,
    OUT held BIGINT, OUT reserved BOOLEAN
) LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(lock_key);
    IF EXISTS (SELECT 1 FROM tool_budget_reservations WHERE reservation_id = p_reservation_id) THEN
        held := 0;
        reserved := TRUE;
        RETURN;
    END IF;
    SELECT coalesce(sum(units), 0) INTO held FROM tool_budget_reservations
        WHERE owner = p_owner AND status = 'HELD';
    reserved := held + p_units <= p_limit;
    IF reserved THEN
        INSERT INTO tool_budget_reservations (reservation_id, owner, units, status, updated_at)
            VALUES (p_reservation_id, p_owner, p_units, 'HELD', p_now);
    END IF;
END
$$;
"""
SCHEMA = Schema(
    "agent.tool_budget",
    (
        Migration(1, sqlite=_V1.format(real="REAL"), postgresql=_V1.format(real="DOUBLE PRECISION")),
        Migration(2, sqlite="", postgresql=_V2_POSTGRESQL),
    ),
)


class BudgetExhausted(Exception):
    pass


class ToolBudget:
    def __init__(self, db: Database, *, max_units_per_owner: int) -> None:
        self._db = db
        self._limit = max_units_per_owner

    async def create_schema(self) -> None:
        await self._db.migrate(SCHEMA)

    async def reserve(self, reservation_id: str, *, owner: str, units: int) -> None:
        """Hold ``units`` for ``owner``, or raise ``BudgetExhausted``; a reservation id already held is a no-op."""
        lock = f"agent.tool_budget:{owner}"
        if self._db.dialect == "postgresql":
            row = await self._db.fetch_one(
                "SELECT held, reserved FROM agent_tool_budget_reserve(:key, :id, :owner, :units, :limit, :now)",
                {
                    "key": lock_key(lock),
                    "id": reservation_id,
                    "owner": owner,
                    "units": units,
                    "limit": self._limit,
                    "now": time.time(),
                },
            )
            assert row is not None  # a function with OUT parameters returns one row
            if not row[1]:
                raise self._exhausted(owner, int(row[0]), units)
            return
        async with self._db.transaction() as tx:
            await tx.lock(lock)
            # Read under the lock (a statement's snapshot is taken when it starts, so after the lock's wait).
            found = (
                await tx.execute(
                    "SELECT (SELECT count(*) FROM tool_budget_reservations WHERE reservation_id = :id),"
                    " (SELECT coalesce(sum(units), 0) FROM tool_budget_reservations"
                    " WHERE owner = :owner AND status = 'HELD')",
                    {"id": reservation_id, "owner": owner},
                )
            ).first()
            assert found is not None
            if found[0]:
                return
            held = int(found[1] or 0)
            if held + units > self._limit:
                raise self._exhausted(owner, held, units)
            await tx.execute(
                "INSERT INTO tool_budget_reservations (reservation_id, owner, units, status, updated_at)"
                " VALUES (:id, :owner, :units, 'HELD', :now)",
                {"id": reservation_id, "owner": owner, "units": units, "now": time.time()},
            )

    def _exhausted(self, owner: str, held: int, units: int) -> BudgetExhausted:
        return BudgetExhausted(
            f"tool budget of {owner or 'anonymous'!r} exhausted: {held} of {self._limit} calls held"
            f" by in-flight runs, {units} more requested"
        )

    async def release(self, reservation_id: str) -> None:
        """Give a held reservation back (a compensation). No-op if absent or already closed."""
        await self._close(reservation_id, "RELEASED")

    async def settle(self, reservation_id: str) -> None:
        """Close a reservation whose calls were used (the run finished)."""
        await self._close(reservation_id, "SETTLED")

    async def _close(self, reservation_id: str, status: str) -> None:
        # One statement, its own transaction (on PostgreSQL without a BEGIN/COMMIT round trip each).
        await self._db.execute(
            "UPDATE tool_budget_reservations SET status = :status, updated_at = :now"
            " WHERE reservation_id = :id AND status = 'HELD'",
            {"status": status, "now": time.time(), "id": reservation_id},
        )

    async def statuses(self, owner: str) -> dict[str, str]:
        rows = await self._db.fetch_all(
            "SELECT reservation_id, status FROM tool_budget_reservations WHERE owner = :owner", {"owner": owner}
        )
        return {row[0]: row[1] for row in rows}
