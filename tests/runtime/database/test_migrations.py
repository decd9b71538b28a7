"""Versioned migrations on both backends: applied once under a lock, never onto a newer database."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from runtime.database import Database, Migration, Schema, SchemaMismatch, open_database

V1 = Migration(
    1,
    sqlite="CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL); INSERT INTO notes (body) VALUES ('v1');",
    postgresql="CREATE TABLE notes (id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL);"
    " INSERT INTO notes (body) VALUES ('v1');",
)
V2 = Migration(
    2,
    sqlite="ALTER TABLE notes ADD COLUMN author TEXT NOT NULL DEFAULT '';",
    postgresql="ALTER TABLE notes ADD COLUMN author TEXT NOT NULL DEFAULT '';",
)


async def _open(url: str, tmp_path: Path) -> Database:
    return await open_database(url, sqlite_path=tmp_path / "m.sqlite3", setting="TEST_DATABASE_URL")


async def test_pending_migrations_apply_in_order_and_only_once(database_url: str, tmp_path: Path) -> None:
    db = await _open(database_url, tmp_path)
    try:
        assert await db.migrate(Schema("notes", (V1,))) == 1
        assert await db.migrate(Schema("notes", (V1,))) == 1
        assert await db.migrate(Schema("notes", (V1, V2))) == 2
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO notes (body, author) VALUES ('after', 'me')")
        assert [tuple(r) for r in await db.fetch_all("SELECT body, author FROM notes ORDER BY id")] == [
            ("v1", ""),
            ("after", "me"),
        ]
    finally:
        await db.close()


async def test_replicas_starting_together_migrate_once(database_url: str, tmp_path: Path) -> None:
    replicas = [await _open(database_url, tmp_path) for _ in range(4)]
    try:
        schema = Schema("notes", (V1, V2))
        assert await asyncio.gather(*(db.migrate(schema) for db in replicas)) == [2, 2, 2, 2]
        # The data step of version 1 ran once, not once per replica.
        assert [tuple(r) for r in await replicas[0].fetch_all("SELECT body FROM notes")] == [("v1",)]
    finally:
        for db in replicas:
            await db.close()


async def test_a_database_newer_than_the_code_is_refused_with_what_to_do(database_url: str, tmp_path: Path) -> None:
    db = await _open(database_url, tmp_path)
    try:
        await db.migrate(Schema("notes", (V1, V2)))
        with pytest.raises(SchemaMismatch, match=r"schema version 2 of 'notes'.*up to 1.*newer agentmesh"):
            await db.migrate(Schema("notes", (V1,)))
    finally:
        await db.close()


def _legacy_file(path: Path, user_version: int) -> None:
    """A data dir written before versioned migrations: tables, and the version in user_version."""
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL); INSERT INTO notes (body) VALUES ('old');"
    )
    conn.execute(f"PRAGMA user_version = {user_version}")
    conn.commit()
    conn.close()


async def test_a_sqlite_file_from_before_migrations_keeps_working_at_its_user_version(tmp_path: Path) -> None:
    _legacy_file(tmp_path / "m.sqlite3", user_version=1)
    db = await _open("", tmp_path)
    try:
        assert await db.migrate(Schema("notes", (V1, V2), legacy_table="notes")) == 2
        assert [tuple(r) for r in await db.fetch_all("SELECT body, author FROM notes")] == [("old", "")]
        assert (await db.fetch_one("PRAGMA user_version") or [0])[0] == 2
    finally:
        await db.close()


@pytest.mark.parametrize("user_version", [0, 3])
async def test_a_sqlite_file_of_an_unknown_version_is_refused(tmp_path: Path, user_version: int) -> None:
    _legacy_file(tmp_path / "m.sqlite3", user_version=user_version)
    db = await _open("", tmp_path)
    try:
        with pytest.raises(SchemaMismatch, match=r"data dir aside|newer agentmesh"):
            await db.migrate(Schema("notes", (V1, V2), legacy_table="notes"))
    finally:
        await db.close()
