"""Where a local run keeps its state: the embedded SQLite files, or one local PostgreSQL for all.

`make run STORE=postgres` (and `make run MESH=envoy STORE=postgres`) sets ``AGENTMESH_LOCAL_STORE``;
both launchers then start a PostgreSQL cluster in ``var/postgres`` (kept between runs, as the
SQLite files are), give each service that keeps state a database of its own in it, and stop the
server when the run ends. Unset or ``sqlite``: nothing changes, the services use their files in
``var/``. A ``AGENTMESH_<SERVICE>_DATABASE_URL`` already in the environment wins either way.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tools.postgres_local import LocalPostgres

STORE_SETTING = "AGENTMESH_LOCAL_STORE"
STORES = ("sqlite", "postgres")
# Service -> its database (the same names the Kubernetes manifests use).
DATABASES = {"agent": "agent", "rag": "rag"}


@dataclass(frozen=True)
class LocalStore:
    kind: str
    # Settings for every service's environment (the database URLs).
    env: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        if self.kind == "sqlite":
            return "state: SQLite files in var/ (make run STORE=postgres: one local PostgreSQL instead)"
        urls = ", ".join(f"{name}={url}" for name, url in self.env.items())
        return f"state: PostgreSQL in var/postgres ({urls})"


def store_kind() -> str:
    """The store asked for, or a one-line error naming the setting and what it accepts."""
    kind = os.environ.get(STORE_SETTING, "") or "sqlite"
    if kind not in STORES:
        raise ValueError(
            f"{STORE_SETTING}={kind!r} is not a store: use one of {', '.join(STORES)} (make run STORE=...)"
        )
    return kind


@asynccontextmanager
async def local_store(repo: Path) -> AsyncIterator[LocalStore]:
    """The store for this run, started before the services and stopped after them."""
    kind = store_kind()
    if kind == "sqlite":
        yield LocalStore(kind)
        return
    cluster = LocalPostgres(repo / "var" / "postgres")
    # initdb and psql are blocking subprocesses; nothing else runs yet, but keep the loop free.
    await asyncio.to_thread(cluster.init)
    cluster.spawn()  # on the loop's own thread: the server dies with the launcher, however it dies
    try:
        await asyncio.to_thread(cluster.wait_ready)
        urls = {
            f"AGENTMESH_{service.upper()}_DATABASE_URL": await asyncio.to_thread(
                cluster.create_database, database, if_missing=True
            )
            for service, database in DATABASES.items()
        }
        yield LocalStore(kind, {name: os.environ.get(name) or url for name, url in urls.items()})
    finally:
        await asyncio.to_thread(cluster.stop)
