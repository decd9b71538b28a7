"""Versioned schema migrations: each store declares its schema as numbered steps, per dialect.

A database records, per component, the last version applied (table ``schema_migrations``).
``Database.migrate`` applies the missing steps in order inside one transaction under a
database-wide lock (PostgreSQL advisory lock; SQLite's write lock), so replicas starting
together migrate once, and a database newer than the code is refused with what to do.

Files written before this mechanism recorded their version in SQLite's ``PRAGMA
user_version``: a component names the table that marks it (``legacy_table``) and the files
that have it are taken to be at ``user_version`` (refused unless it is a version this build
knows).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from runtime.database.errors import SchemaMismatch

if TYPE_CHECKING:
    from runtime.database.interface import Transaction

MIGRATIONS_TABLE = "schema_migrations"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    sqlite: str
    postgresql: str

    def script(self, dialect: Literal["sqlite", "postgresql"]) -> str:
        return self.sqlite if dialect == "sqlite" else self.postgresql


@dataclass(frozen=True, slots=True)
class Schema:
    component: str
    migrations: tuple[Migration, ...]
    # A table whose presence, in a SQLite file without a migrations table, means the file was
    # written before versioned migrations (its version is then in PRAGMA user_version).
    legacy_table: str = ""

    def __post_init__(self) -> None:
        versions = [m.version for m in self.migrations]
        if versions != list(range(1, len(versions) + 1)):
            raise ValueError(f"{self.component}: migrations must be numbered 1, 2, … in order, got {versions}")

    @property
    def latest(self) -> int:
        return len(self.migrations)

    def pending(self, current: int) -> tuple[Migration, ...]:
        return self.migrations[current:]

    def check(self, current: int, *, where: str) -> None:
        """Refuse a database migrated by a newer build: its data may not fit this code."""
        if current > self.latest:
            raise SchemaMismatch(
                f"{where} holds schema version {current} of {self.component!r}, but this build knows versions"
                f" up to {self.latest}: it was migrated by a newer agentmesh. Run that version (or newer),"
                " or point the service at another database (or move the data dir aside)"
            )


async def recorded_version(tx: Transaction, component: str, *, real_type: str) -> int | None:
    """The version recorded for ``component`` (None: never migrated), creating the table if new."""
    await tx.execute(
        f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} ("
        f" component TEXT PRIMARY KEY, version INTEGER NOT NULL, applied_at {real_type} NOT NULL)"
    )
    found = (
        await tx.execute(f"SELECT version FROM {MIGRATIONS_TABLE} WHERE component = :c", {"c": component})
    ).scalar()
    return None if found is None else int(found)


async def record_version(tx: Transaction, schema: Schema) -> None:
    await tx.execute(
        f"INSERT INTO {MIGRATIONS_TABLE} (component, version, applied_at) VALUES (:c, :v, :t)"
        " ON CONFLICT (component) DO UPDATE SET version = excluded.version, applied_at = excluded.applied_at",
        {"c": schema.component, "v": schema.latest, "t": time.time()},
    )
