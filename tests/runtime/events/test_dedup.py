"""Deduplication by event id: the durable ledger and its retention."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runtime.database import Database, open_database
from runtime.events.dedup import ProcessedEvents


@pytest.fixture
async def db(database_url: str, tmp_path: Path) -> AsyncIterator[Database]:
    database = await open_database(database_url, sqlite_path=tmp_path / "dedup.db", setting="TEST_DATABASE_URL")
    yield database
    await database.close()


async def test_the_processed_event_ledger_forgets_ids_after_its_retention(db: Database) -> None:
    ledger = ProcessedEvents(db, consumer="c")
    await ledger.create_schema()
    async with db.transaction() as tx:
        assert await ledger.claim(tx, "e-1")
        assert not await ledger.claim(tx, "e-1")
    assert await ledger.prune(older_than=3600) == 0
    assert await ledger.prune(older_than=-1) == 1
    async with db.transaction() as tx:
        assert await ledger.claim(tx, "e-1")


async def test_a_batch_claim_returns_only_the_ids_not_yet_applied_whatever_its_size(db: Database) -> None:
    ledger = ProcessedEvents(db, consumer="c")
    other = ProcessedEvents(db, consumer="other")
    await ledger.create_schema()
    async with db.transaction() as tx:
        assert await ledger.claim_all(tx, []) == set()
        assert await ledger.claim_all(tx, ["e-2", "e-1", "e-2"]) == {"e-1", "e-2"}
    async with db.transaction() as tx:
        assert await ledger.claim_all(tx, ["e-1", "e-3"]) == {"e-3"}
        assert await other.claim_all(tx, ["e-1"]) == {"e-1"}
    many = [f"m-{n}" for n in range(500)]
    async with db.transaction() as tx:
        assert await ledger.claim_all(tx, [*many, "e-2"]) == set(many)
    assert await ledger.applied(["e-1", "e-3", "e-4", *many[:3]]) == {"e-1", "e-3", *many[:3]}
    assert await ledger.applied([]) == set()
    assert await other.applied(["e-1", "e-2"]) == {"e-1"}
