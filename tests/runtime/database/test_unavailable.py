"""PostgreSQL going away: typed errors instead of driver errors, and recovery without a restart."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import structlog

from runtime.backoff import Backoff
from runtime.database import Database, DatabaseUnavailable, Migration, Schema, open_database, wait_until_reachable
from tools.postgres_local import LocalPostgres

SCHEMA = Schema("kv", (Migration(1, sqlite="", postgresql="CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT);"),))


async def _open(url: str, tmp_path: Path) -> Database:
    return await open_database(url, sqlite_path=tmp_path / "unused.sqlite3", setting="AGENTMESH_TEST_DATABASE_URL")


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_a_stopped_server_gives_database_unavailable_and_the_pool_recovers(
    own_postgres: LocalPostgres, tmp_path: Path
) -> None:
    db = await _open(own_postgres.url(), tmp_path)
    try:
        await db.migrate(SCHEMA)
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO kv VALUES ('a', '1')")

        await asyncio.to_thread(own_postgres.stop)
        with pytest.raises(DatabaseUnavailable) as raised:
            await db.fetch_all("SELECT v FROM kv")
        assert raised.value.setting == "AGENTMESH_TEST_DATABASE_URL"
        with pytest.raises(DatabaseUnavailable):
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO kv VALUES ('b', '2')")

        await asyncio.to_thread(own_postgres.start)
        # Same Database object: the pool drops the dead connections and opens new ones.
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO kv VALUES ('c', '3')")
        assert [tuple(r) for r in await db.fetch_all("SELECT k FROM kv ORDER BY k")] == [("a",), ("c",)]
    finally:
        await db.close()


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_waiting_for_an_unreachable_database_logs_the_setting_once_and_returns_when_it_is_up(
    unstarted_postgres: LocalPostgres, tmp_path: Path
) -> None:
    cluster = unstarted_postgres
    # "postgres" exists as soon as the server accepts connections.
    db = await _open(cluster.url("postgres"), tmp_path)
    try:
        with structlog.testing.capture_logs() as logs:
            waiting = asyncio.create_task(wait_until_reachable(db, backoff=Backoff(initial=0.05, maximum=0.2)))
            await asyncio.sleep(0.5)
            assert not waiting.done()
            await asyncio.to_thread(cluster.start)
            await asyncio.wait_for(waiting, timeout=30)
        errors = [entry for entry in logs if entry["log_level"] == "error"]
        assert len(errors) == 1, errors
        assert "AGENTMESH_TEST_DATABASE_URL" in errors[0]["event"]
    finally:
        await db.close()
