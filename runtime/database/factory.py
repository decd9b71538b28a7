"""Which backend a URL setting selects, and waiting for a database that is not up yet."""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog

from runtime.backoff import Backoff
from runtime.database.errors import DatabaseUnavailable
from runtime.database.interface import Database
from runtime.database.postgres import PostgresDatabase
from runtime.database.sqlite import SQLiteDatabase
from runtime.database.urls import validate_url

log = structlog.get_logger(__name__)


async def open_database(url: str, *, sqlite_path: Path, setting: str, pool_size: int = 10) -> Database:
    """PostgreSQL when ``url`` is set, else the SQLite file ``sqlite_path`` (the embedded default).

    Opening PostgreSQL connects to nothing yet: ``wait_until_reachable`` does, with backoff.
    """
    if not validate_url(url, setting=setting):
        return await SQLiteDatabase.open(sqlite_path)
    return PostgresDatabase(url, setting=setting, pool_size=pool_size)


async def wait_until_reachable(db: Database, *, backoff: Backoff | None = None) -> None:
    """Return once ``db`` answers; until then log one line naming the setting, and retry with backoff."""
    if not isinstance(db, PostgresDatabase):
        return
    backoff = backoff or Backoff(initial=0.5, maximum=15.0)
    attempts = 0
    while True:
        try:
            await db.ping()
        except DatabaseUnavailable as error:
            attempts += 1
            delay = backoff.next_delay()
            # The first failure says what to fix; the repeats stay at debug so the log is not flooded.
            (log.error if attempts == 1 else log.debug)(
                f"database unreachable; set {db.setting} to a reachable PostgreSQL (retrying until it answers)",
                setting=db.setting,
                database=db.description,
                error=str(error.__cause__ or error),
                attempt=attempts,
                retry_in=round(delay, 2),
            )
            await asyncio.sleep(delay)
            continue
        if attempts:
            log.info("database reachable", setting=db.setting, database=db.description, after_attempts=attempts)
        return
