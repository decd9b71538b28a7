"""PostgreSQL's pool: a replica holds at most ``pool_size`` connections, whatever the load, and keeps
them (a steady load opens each once, never closing one at check-in to open it again)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from sqlalchemy import event
from sqlalchemy.engine import make_url

from bench.delay_hop import DelayHop
from runtime.database.postgres import PostgresDatabase
from tests.postgres import OTHER_CLIENTS, connections_seen
from tests.system import wait_until

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


# A session is in pg_stat_activity once the server has accepted it; SQLAlchemy then sets a new
# pool's first connection up (the dialect's initialize: the server's version, schema, isolation
# level, a round trip each, in a transaction).
STAGES = {"connecting": OTHER_CLIENTS, "setting up": OTHER_CLIENTS + " AND query <> ''"}


@pytest.mark.parametrize("stage", STAGES)
async def test_a_caller_cancelled_while_its_connection_is_made_returns_only_once_the_server_let_it_go(
    postgres_url: str, stage: str
) -> None:
    # The pool frees a connection's place when making it fails: a connection abandoned half-made
    # (its socket closed, or left to the garbage collector) would let the next caller open another
    # while the server still holds the first, one more than the pool's stated size.
    url = make_url(postgres_url)
    assert url.port is not None
    async with DelayHop(url.host or "127.0.0.1", url.port, delay_s=0.1) as hop:
        db = PostgresDatabase(
            url.set(port=hop.port).render_as_string(hide_password=False), setting="TEST_DATABASE_URL", pool_size=1
        )
        observer = await asyncpg.connect(postgres_url)
        try:
            connecting = asyncio.ensure_future(db.execute("SELECT 1"))
            # The server is at that stage; its answer is still on the way through the hop.
            await wait_until(lambda: observer.fetchval(STAGES[stage]), timeout_s=10, interval_s=0.01)
            connecting.cancel()
            outcome = await asyncio.gather(connecting, return_exceptions=True)
            held_by_the_server = await observer.fetchval(OTHER_CLIENTS)
            # Ordinarily none; a cancellation that reached a loaded machine's pool only after the
            # connection was made leaves it in the pool, rightly, and on the server.
            pool = db.engine.sync_engine.pool
            held_by_the_pool = pool.checkedin() + pool.checkedout()
            next_caller = await db.execute("SELECT 2")
        finally:
            await observer.close()
            await db.close()
    assert connecting.cancelled(), outcome
    assert held_by_the_server == held_by_the_pool
    assert next_caller.scalar() == 2


async def running(url: str, statement: str) -> None:
    """Return once the server is running ``statement`` (watched from a connection of its own)."""
    observer = await asyncpg.connect(url)
    active = "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = $1"
    try:
        await wait_until(lambda: observer.fetchval(active, statement), timeout_s=10, interval_s=0.01)
    finally:
        await observer.close()


async def test_a_statement_whose_caller_is_cancelled_ends_on_its_own_and_its_connection_is_kept(
    postgres_url: str,
) -> None:
    # Interrupting it would cost the server a connection of its own for the cancel request and the
    # pool a new connection (an interrupted one is discarded): a watch whose client hangs up
    # mid-read does this all the time, for a read that ends in milliseconds.
    db = PostgresDatabase(postgres_url, setting="TEST_DATABASE_URL", pool_size=1)
    opened: list[object] = []
    event.listen(db.engine.sync_engine.pool, "connect", lambda conn, _record: opened.append(conn))
    slow_insert = "INSERT INTO ended SELECT 1 FROM pg_sleep(0.3)"
    try:
        await db.execute("CREATE TABLE ended (n INT)")
        session = await db.fetch_one("SELECT pg_backend_pid()")
        writing = asyncio.ensure_future(db.execute(slow_insert))
        await running(postgres_url, slow_insert)
        writing.cancel()
        outcome = await asyncio.gather(writing, return_exceptions=True)
        inserted = await db.fetch_one("SELECT count(*) FROM ended")
        after = await db.fetch_one("SELECT pg_backend_pid()")
    finally:
        await db.close()
    assert writing.cancelled(), outcome  # the caller still sees its cancellation
    assert inserted[0] == 1  # the statement ran to its end
    assert after[0] == session[0] and len(opened) == 1  # on the same connection, kept


async def test_a_statement_still_running_a_while_after_its_caller_is_cancelled_is_interrupted(
    postgres_url: str,
) -> None:
    db = PostgresDatabase(postgres_url, setting="TEST_DATABASE_URL", pool_size=1)
    try:
        sleeping = asyncio.ensure_future(db.execute("SELECT pg_sleep(60)"))
        await running(postgres_url, "SELECT pg_sleep(60)")
        sleeping.cancel()
        outcome = await asyncio.wait_for(asyncio.gather(sleeping, return_exceptions=True), timeout=30)
        next_caller = await db.execute("SELECT 2")
    finally:
        await db.close()
    assert sleeping.cancelled(), outcome
    assert next_caller.scalar() == 2
