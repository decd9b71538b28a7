"""PostgreSQL for tests: one throwaway cluster per session, a fresh database per test.

Tests that stop the server under traffic take a cluster of their own (``own_postgres``), so
nothing else loses its database.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import asyncpg
import pytest

from runtime.processes import tied_child
from tests.ports import free_port
from tools.postgres_local import LocalPostgres, installed

BACKENDS = ("sqlite", "postgresql")


_NOT_INSTALLED = "PostgreSQL 15 not installed (make debian-deps installs postgresql-15)"
# For a test that runs PostgreSQL itself (a launcher, a bench run) rather than through the fixtures below.
requires_postgres = pytest.mark.skipif(not installed(), reason=_NOT_INSTALLED)


def _require_postgres() -> None:
    if not installed():
        pytest.skip(_NOT_INSTALLED)


@contextmanager
def _throwaway_cluster(*, start: bool = True) -> Iterator[LocalPostgres]:
    _require_postgres()
    # Not under pytest's temp dirs: the postgres user needs search permission on every parent,
    # and each pytest process that starts resets pytest-of-<user> to 0700 (and prunes old runs),
    # which would lock a running cluster out of its own data directory.
    root = Path(tempfile.mkdtemp(prefix="agentmesh-postgres-"))
    cluster = LocalPostgres(root / "cluster", port=free_port())
    # pg_ctl detaches the server: a pytest killed outright (SIGKILL, OOM) would leave it running
    # and its directory behind. This guard, tied to pytest, stops and deletes them then.
    guard = subprocess.Popen(
        **tied_child([sys.executable, "-m", "tools.postgres_local", "guard", str(cluster.root), "--remove", str(root)]),
        stdout=subprocess.PIPE,
    )
    try:
        if start:
            cluster.start()
        assert guard.stdout is not None
        if guard.stdout.readline() != b"guarding\n":
            raise RuntimeError(f"the PostgreSQL guard exited with {guard.wait()}")
        yield cluster
    finally:
        cluster.stop(mode="immediate")
        shutil.rmtree(root, ignore_errors=True)
        guard.terminate()
        guard.communicate(timeout=30)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[LocalPostgres]:
    with _throwaway_cluster() as cluster:
        yield cluster


@pytest.fixture
def postgres_url(postgres_cluster: LocalPostgres) -> Iterator[str]:
    """A database of its own for this test, dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    url = postgres_cluster.create_database(name)
    yield url
    postgres_cluster.drop_database(name)


@pytest.fixture
def own_postgres() -> Iterator[LocalPostgres]:
    """A cluster only this test uses: it may stop and start it."""
    with _throwaway_cluster() as cluster:
        yield cluster


@pytest.fixture
def unstarted_postgres() -> Iterator[LocalPostgres]:
    """A cluster of this test's own, not started yet (its port is chosen): the test starts it."""
    with _throwaway_cluster(start=False) as cluster:
        yield cluster


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest) -> str:
    """Each test using it runs twice: on the embedded SQLite default ("") and on PostgreSQL."""
    if request.param == "sqlite":
        return ""
    return str(request.getfixturevalue("postgres_url"))


# The database's client connections other than the asking one. The server's own workers show in
# pg_stat_activity under the database too (an autovacuum worker analyzing a table the load filled),
# and are nobody's connection.
OTHER_CLIENTS = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    " AND backend_type = 'client backend'"
)


@asynccontextmanager
async def connections_seen(url: str, *, every_s: float = 0.01) -> AsyncIterator[list[int]]:
    """The server's count of the database's other client connections (``OTHER_CLIENTS``), sampled
    while the block runs (from a connection of its own, not counted)."""
    watcher = await asyncpg.connect(url)
    seen: list[int] = []

    async def watch() -> None:
        while True:
            seen.append(await watcher.fetchval(OTHER_CLIENTS))
            await asyncio.sleep(every_s)

    watching = asyncio.create_task(watch())
    try:
        yield seen
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
        await watcher.close()
