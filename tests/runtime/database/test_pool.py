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


async def test_a_connection_left_inside_a_transaction_is_never_handed_to_the_next_caller(postgres_url: str) -> None:
    # Check-in does no ROLLBACK (statements end their own transactions): a connection that comes
    # back inside one anyway is discarded, so its open transaction can neither hold locks nor
    # swallow the next caller's autocommit statements.
    db = PostgresDatabase(postgres_url, setting="TEST_DATABASE_URL", pool_size=1)
    try:
        await db.execute("CREATE TABLE kept (n INT)")
        async with db._connection() as (driver, _statements):
            await driver.execute("BEGIN")
            await driver.execute("INSERT INTO kept VALUES (1)")
        await db.execute("INSERT INTO kept VALUES (2)")
        rows = await db.fetch_all("SELECT n, txid_current_if_assigned() IS NULL AS outside FROM kept")
    finally:
        await db.close()
    assert [(row["n"], row["outside"]) for row in rows] == [(2, True)]


async def test_a_caller_cancelled_as_a_connection_comes_free_is_cancelled_and_leaves_it_to_the_next(
    postgres_url: str,
) -> None:
    # Python 3.11's asyncio.wait_for (SQLAlchemy's wait for a connection) returned the connection
    # when its caller was cancelled just as one came free: the cancellation was lost, and a
    # background loop being stopped at that moment ran on, hanging its service's shutdown.
    db = PostgresDatabase(postgres_url, setting="TEST_DATABASE_URL", pool_size=1)
    try:
        async with db.transaction() as tx:
            waiting = asyncio.ensure_future(db.execute("SELECT 1"))
            await tx.execute("SELECT pg_sleep(0.1)")  # the caller is waiting for the pool's one connection
        waiting.cancel()  # the connection came back (woke it) and no await has run since
        outcome = await asyncio.gather(waiting, return_exceptions=True)
        next_caller = await db.execute("SELECT 2")
    finally:
        await db.close()
    assert waiting.cancelled(), outcome
    assert next_caller.scalar() == 2
