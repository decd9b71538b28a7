"""PostgreSQL for tests: one throwaway cluster per session, a fresh database per test.

Tests that stop the server under traffic take a cluster of their own (``own_postgres``), so
nothing else loses its database.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.postgres_local import LocalPostgres, installed

BACKENDS = ("sqlite", "postgresql")


def _require_postgres() -> None:
    if not installed():
        pytest.skip("PostgreSQL 15 not installed (make debian-deps installs postgresql-15)")


@pytest.fixture(scope="session")
def postgres_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPostgres]:
    _require_postgres()
    cluster = LocalPostgres(tmp_path_factory.mktemp("postgres") / "cluster")
    cluster.start()
    yield cluster
    cluster.stop(mode="immediate")


@pytest.fixture
def postgres_url(postgres_cluster: LocalPostgres) -> Iterator[str]:
    """A database of its own for this test, dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    url = postgres_cluster.create_database(name)
    yield url
    postgres_cluster.drop_database(name)


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[LocalPostgres]:
    """A cluster only this test uses: it may stop and start it."""
    _require_postgres()
    cluster = LocalPostgres(tmp_path / "postgres")
    cluster.start()
    yield cluster
    cluster.stop(mode="immediate")


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest) -> str:
    """Each test using it runs twice: on the embedded SQLite default ("") and on PostgreSQL."""
    if request.param == "sqlite":
        return ""
    return str(request.getfixturevalue("postgres_url"))
