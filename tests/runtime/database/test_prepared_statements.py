"""PostgreSQL connections keep their prepared statements bounded: the least recently used are closed."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.database import open_database

pytestmark = pytest.mark.postgres


async def test_a_connection_keeps_at_most_a_hundred_prepared_statements(postgres_url: str, tmp_path: Path) -> None:
    db = await open_database(postgres_url, sqlite_path=tmp_path / "unused.sqlite3", setting="TEST_DATABASE_URL")
    try:
        async with db.transaction() as tx:  # one transaction: one connection, one statement cache
            for n in range(150):
                assert (await tx.execute(f"SELECT {n} AS n")).rows[0][0] == n
            # asyncpg closes a dropped statement before the connection's next query.
            await tx.execute("SELECT 1")
            prepared = (await tx.execute("SELECT count(*) FROM pg_prepared_statements")).rows[0][0]
            # The hundred kept, and a few more: asyncpg's own (its type introspection, the migrations').
            assert 100 <= prepared < 120
            # The first statements were dropped; running one again prepares it anew and still works.
            assert (await tx.execute("SELECT 0 AS n")).rows[0][0] == 0
    finally:
        await db.close()
