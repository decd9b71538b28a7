"""The tool budget: a caller's in-flight runs hold at most its limit of tool calls, whichever replica reserves."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from runtime.database import Database, open_database
from services.agent.budget import BudgetExhausted, ToolBudget
from tests.system import wait_until


async def _replicas(tmp_path: Path, database_url: str, count: int, *, limit: int) -> list[tuple[Database, ToolBudget]]:
    """``count`` replicas' budgets: each its own connections to one database (or SQLite file)."""
    opened = []
    for _ in range(count):
        db = await open_database(database_url, sqlite_path=tmp_path / "agent.sqlite3", setting="DATABASE_URL")
        budget = ToolBudget(db, max_units_per_owner=limit)
        await budget.create_schema()
        opened.append((db, budget))
    return opened


async def test_replicas_reserving_for_one_caller_at_once_hold_no_more_than_its_limit(
    tmp_path: Path, database_url: str
) -> None:
    replicas = await _replicas(tmp_path, database_url, 2, limit=4)
    try:

        async def reserve(n: int) -> bool:
            budget = replicas[n % 2][1]
            try:
                await budget.reserve(f"run-{n}:reserve_budget", owner="alice", units=1)
            except BudgetExhausted:
                return False
            return True

        granted = await asyncio.gather(*(reserve(n) for n in range(16)))
        # Another caller's budget is its own.
        await replicas[0][1].reserve("bob-run:reserve_budget", owner="bob", units=4)

        assert sum(granted) == 4
        statuses = await replicas[1][1].statuses("alice")
        assert sorted(statuses.values()) == ["HELD"] * 4
        assert set(statuses) == {f"run-{n}:reserve_budget" for n, ok in enumerate(granted) if ok}
    finally:
        for db, _ in replicas:
            await db.close()


async def test_a_retried_reservation_is_held_once_and_a_release_gives_its_calls_back(
    tmp_path: Path, database_url: str
) -> None:
    [(db, budget)] = await _replicas(tmp_path, database_url, 1, limit=3)
    try:
        await budget.reserve("run-1:reserve_budget", owner="alice", units=2)
        await budget.reserve("run-1:reserve_budget", owner="alice", units=2)  # a retry after a crash
        with pytest.raises(BudgetExhausted, match="tool budget of 'alice' exhausted: 2 of 3 calls held"):
            await budget.reserve("run-2:reserve_budget", owner="alice", units=2)

        await budget.release("run-1:reserve_budget")
        await budget.reserve("run-2:reserve_budget", owner="alice", units=2)
        await budget.settle("run-2:reserve_budget")
        await budget.release("run-2:reserve_budget")  # closed already: stays settled

        assert await budget.statuses("alice") == {"run-1:reserve_budget": "RELEASED", "run-2:reserve_budget": "SETTLED"}
    finally:
        await db.close()


@pytest.mark.postgres
async def test_reservations_queued_behind_one_another_each_count_the_ones_committed_before(
    tmp_path: Path, postgres_url: str
) -> None:
    # Every reservation is made to wait after reading what is held (its INSERT queues behind a
    # SHARE lock on the table), so unless they are serialized per caller, and each reads after
    # the one before it committed, they all read 0 held and all pass.
    replicas = await _replicas(tmp_path, postgres_url, 2, limit=4)
    db = replicas[0][0]
    try:
        async with db.transaction() as blocking:
            await blocking.execute("LOCK TABLE tool_budget_reservations IN SHARE MODE")

            async def reserve(n: int) -> bool:
                try:
                    await replicas[n % 2][1].reserve(f"run-{n}:reserve_budget", owner="alice", units=1)
                except BudgetExhausted:
                    return False
                return True

            reserving = asyncio.gather(*(reserve(n) for n in range(12)))

            async def all_waiting() -> bool:
                # Read outside the blocking transaction: the server's activity view is frozen within one.
                waiting = await replicas[1][0].execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock'"
                )
                return bool(waiting.scalar() == 12)

            await wait_until(all_waiting, timeout_s=30, interval_s=0.01)
        assert sum(await reserving) == 4
    finally:
        for opened, _ in replicas:
            await opened.close()
