"""The SQLite helper: a transaction commits whole or not at all, even when its caller is cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runtime.sqlite import Database


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.open(tmp_path / "t.sqlite3")
    await database.executescript("CREATE TABLE items (name TEXT PRIMARY KEY)")
    yield database
    await database.close()


async def _names(db: Database) -> list[str]:
    return [row[0] for row in await db.fetch_all("SELECT name FROM items ORDER BY name")]


async def test_commit_hooks_run_only_after_a_commit(db: Database) -> None:
    committed: list[str] = []
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO items VALUES ('a')")
        tx.on_commit(lambda: committed.append("a"))
        assert committed == []
    with pytest.raises(RuntimeError):
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO items VALUES ('b')")
            tx.on_commit(lambda: committed.append("b"))
            raise RuntimeError("abandon")
    assert committed == ["a"]
    assert await _names(db) == ["a"]


async def test_a_failed_commit_leaves_the_connection_usable(db: Database) -> None:
    await db.executescript("CREATE TABLE refs (name TEXT REFERENCES items (name) DEFERRABLE INITIALLY DEFERRED)")
    with pytest.raises(Exception, match="FOREIGN KEY"):
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO refs VALUES ('missing')")  # checked at COMMIT
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO items VALUES ('after')")
    assert await _names(db) == ["after"]


async def test_a_cancelled_transaction_is_rolled_back_and_the_next_one_works(db: Database) -> None:
    entered = asyncio.Event()

    async def interrupted() -> None:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO items VALUES ('half')")
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(interrupted())
    await entered.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

    async with db.transaction() as tx:
        await tx.execute("INSERT INTO items VALUES ('whole')")
    assert await _names(db) == ["whole"]


async def test_cancellation_at_any_point_of_a_transaction_leaves_the_connection_usable(db: Database) -> None:
    async def insert(i: int) -> None:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO items VALUES (?)", (f"item-{i}",))

    outcomes: list[BaseException | None] = []
    for i in range(60):
        task = asyncio.create_task(insert(i))
        # Cancel after a varying number of loop turns: before BEGIN, mid-body, during COMMIT.
        for _ in range(i % 6):
            await asyncio.sleep(0)
        task.cancel()
        outcomes.extend(await asyncio.gather(task, return_exceptions=True))

    assert all(o is None or isinstance(o, asyncio.CancelledError) for o in outcomes), outcomes
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO items VALUES ('after')")
    assert "after" in await _names(db)
