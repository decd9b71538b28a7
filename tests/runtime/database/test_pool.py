"""PostgreSQL's pool: a replica holds at most ``pool_size`` connections, whatever the load, and keeps
them (a steady load opens each once, never closing one at check-in to open it again)."""

from __future__ import annotations

import asyncio

from sqlalchemy import event

from runtime.database.postgres import PostgresDatabase
from tests.postgres import connections_seen

POOL_SIZE = 4


async def test_callers_past_the_pool_size_wait_for_a_connection_instead_of_opening_more(postgres_url: str) -> None:
    db = PostgresDatabase(postgres_url, setting="TEST_DATABASE_URL", pool_size=POOL_SIZE)
    opened: list[object] = []
    closed: list[object] = []
    event.listen(db.engine.sync_engine.pool, "connect", lambda conn, _record: opened.append(conn))
    event.listen(db.engine.sync_engine.pool, "close", lambda conn, _record: closed.append(conn))

    async def transaction() -> None:
        async with db.transaction() as tx:
            await tx.execute("SELECT pg_sleep(0.02)")

    async def statement() -> None:
        await db.execute("SELECT pg_sleep(0.02)")

    try:
        async with connections_seen(postgres_url) as seen:
            for _ in range(3):  # waves of ten times as many callers as connections, both kinds of use
                await asyncio.gather(*(transaction() if n % 2 else statement() for n in range(10 * POOL_SIZE)))
    finally:
        await db.close()
    assert max(seen) == POOL_SIZE  # saturated, and never one more
    assert len(opened) == POOL_SIZE  # each opened once and kept:
    assert len(closed) == len(opened)  # closed only by close()
