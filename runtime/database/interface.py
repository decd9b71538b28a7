"""The one interface the stores are written against, whichever backend holds the data.

Statements are SQL text with ``:name`` parameters and a mapping of values. SQL both SQLite and
PostgreSQL accept (``INSERT ... ON CONFLICT``, ``RETURNING``, partial indexes) is written once;
where the two really differ (DDL types, row locks) a store asks ``dialect`` or uses the
transaction's ``lock``, which means "serialize with every other transaction taking this lock"
on either backend.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from runtime.database.migrations import Schema

Dialect = Literal["sqlite", "postgresql"]
Params = Mapping[str, Any]


class Row(Protocol):
    """A result row: columns by position (both drivers' rows also take names, but differently)."""

    def __getitem__(self, index: int, /) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...

    def __len__(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Result:
    """What a statement returned: its rows (fully fetched) and how many rows it changed."""

    rows: Sequence[Row] = field(default_factory=list)
    rowcount: int = 0

    def first(self) -> Row | None:
        return self.rows[0] if self.rows else None

    def scalar(self) -> Any:
        row = self.first()
        return None if row is None else row[0]


class Transaction(Protocol):
    dialect: Dialect

    async def execute(self, sql: str, params: Params | None = None) -> Result: ...

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the transaction has committed (never if it rolls back)."""

    async def lock(self, name: str) -> None:
        """Hold ``name`` until this transaction ends; other transactions taking it wait (any process)."""

    async def lock_all(self, names: Sequence[str]) -> None:
        """``lock`` each of ``names``, in that order (one statement on PostgreSQL)."""

    async def notify(self, channel: str) -> None:
        """Once committed, wake ``listen(channel)`` callbacks: in every process on PostgreSQL."""


class Database(Protocol):
    dialect: Dialect
    # Where it is, for messages ("AGENTMESH_AGENT_DATABASE_URL=postgresql://…" or a file path).
    description: str

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """A write transaction: committed if the block returns, rolled back if it raises."""

    async def execute(self, sql: str, params: Params | None = None) -> Result:
        """One statement as a transaction of its own (on PostgreSQL autocommit: one round trip, no BEGIN/COMMIT)."""

    def wake(self, channel: str) -> None:
        """Call this process's ``listen(channel)`` callbacks now (after a commit that notified ``channel``)."""

    async def fetch_all(self, sql: str, params: Params | None = None) -> Sequence[Row]:
        """A read of the last committed state (never waits behind a writer)."""

    async def fetch_one(self, sql: str, params: Params | None = None) -> Row | None: ...

    async def ping(self) -> None:
        """Return once the database answers a read; raise if it cannot (DatabaseUnavailable on PostgreSQL)."""

    async def migrate(self, schema: Schema) -> int:
        """Bring ``schema`` to its latest version under a database-wide lock; returns the version."""

    async def listen(self, channel: str, callback: Callable[[], None]) -> None:
        """Call ``callback`` after each commit that notified ``channel``.

        Also once when listening starts and after each reconnect (notifications sent while
        nobody listened are lost): the callback re-reads what it follows, never trusts a count.
        """

    async def close(self) -> None: ...


def in_list(prefix: str, values: Sequence[Any]) -> tuple[str, dict[str, Any]]:
    """``(:p0, :p1, …)`` and its parameters, for ``column IN …`` with a list of values."""
    names = [f"{prefix}{i}" for i in range(len(values))]
    return "(" + ", ".join(f":{n}" for n in names) + ")", dict(zip(names, values, strict=True))
