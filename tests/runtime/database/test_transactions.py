"""The database interface on both backends: a transaction commits whole or not at all, even when
its caller is cancelled; commit hooks and notifications follow commits only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runtime.database import Database, Migration, Schema, open_database

ITEMS = Schema(
    "test.items",
    (
        Migration(
            1,
            sqlite="CREATE TABLE items (name TEXT PRIMARY KEY);"
            " CREATE TABLE refs (name TEXT REFERENCES items (name) DEFERRABLE INITIALLY DEFERRED);",
            postgresql="CREATE TABLE items (name TEXT PRIMARY KEY);"
            " CREATE TABLE refs (name TEXT REFERENCES items (name) DEFERRABLE INITIALLY DEFERRED);",
        ),
    ),
)


@pytest.fixture
async def db(database_url: str, tmp_path: Path) -> AsyncIterator[Database]:
    database = await open_database(database_url, sqlite_path=tmp_path / "t.sqlite3", setting="TEST_DATABASE_URL")
    await database.migrate(ITEMS)
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


async def test_parameters_are_named_and_rowcounts_and_returning_work(db: Database) -> None:
    async with db.transaction() as tx:
        inserted = await tx.execute(
            "INSERT INTO items (name) VALUES (:name) ON CONFLICT DO NOTHING RETURNING name", {"name": "x"}
        )
        again = await tx.execute(
            "INSERT INTO items (name) VALUES (:name) ON CONFLICT DO NOTHING RETURNING name", {"name": "x"}
        )
        renamed = await tx.execute("UPDATE items SET name = :new WHERE name = :old", {"new": "y", "old": "x"})
    assert inserted.scalar() == "x"
    assert again.first() is None
    assert renamed.rowcount == 1
    assert await _names(db) == ["y"]


async def test_a_failed_commit_leaves_the_connection_usable(db: Database) -> None:
    with pytest.raises(Exception, match=r"(?i)foreign key"):
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
            await tx.execute("INSERT INTO items VALUES (:name)", {"name": f"item-{i}"})

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


async def test_a_lock_serializes_read_then_write_across_connections(db: Database) -> None:
    """Two transactions taking the same lock never interleave a read-then-write (lost update)."""
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO items VALUES ('0')")

    async def increment() -> None:
        async with db.transaction() as tx:
            await tx.lock("items")
            current = int((await tx.execute("SELECT name FROM items")).scalar())
            await asyncio.sleep(0.001)
            await tx.execute("UPDATE items SET name = :n", {"n": str(current + 1)})

    await asyncio.gather(*(increment() for _ in range(20)))
    assert await _names(db) == ["20"]


async def test_listeners_are_woken_by_commits_that_notify_only(db: Database) -> None:
    woken = asyncio.Event()
    await db.listen("items_changed", woken.set)
    await asyncio.wait_for(woken.wait(), timeout=10)  # once listening: nothing was heard before
    woken.clear()
    with pytest.raises(RuntimeError):
        async with db.transaction() as tx:
            await tx.notify("items_changed")
            raise RuntimeError("rolled back")
    assert not woken.is_set()
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO items VALUES ('n')")
        await tx.notify("items_changed")
    await asyncio.wait_for(woken.wait(), timeout=10)


async def test_a_read_after_a_commit_sees_it_while_other_reads_are_in_flight(db: Database) -> None:
    # The agent reads a run the moment CreateRun has committed it, while other calls read too.
    async with db.transaction() as tx:
        for number in range(50):
            await tx.execute("INSERT INTO items (name) VALUES (:name)", {"name": f"seed-{number:02d}"})
    reading = True

    async def keep_reading() -> None:
        while reading:
            await db.fetch_all("SELECT name FROM items")
            await db.fetch_one("SELECT name FROM items ORDER BY name")

    readers = [asyncio.create_task(keep_reading()) for _ in range(8)]
    try:
        missed = []
        for number in range(100):
            name = f"new-{number:03d}"
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO items (name) VALUES (:name)", {"name": name})
            if await db.fetch_one("SELECT name FROM items WHERE name = :name", {"name": name}) is None:
                missed.append(name)
        assert missed == []
    finally:
        reading = False
        await asyncio.gather(*readers)


async def test_ping_answers_before_any_schema_and_after_one(database_url: str, tmp_path: Path) -> None:
    database = await open_database(database_url, sqlite_path=tmp_path / "p.sqlite3", setting="TEST_DATABASE_URL")
    try:
        await database.ping()  # nothing migrated yet: an empty file or database still answers
        await database.migrate(ITEMS)
        await database.ping()
    finally:
        await database.close()
