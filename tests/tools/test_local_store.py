"""`make run STORE=postgres`: one local PostgreSQL for the run, a database per service, stopped after."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.system import REPO
from tools.local_store import STORE_SETTING, local_store, store_kind
from tools.postgres_local import LocalPostgres, installed


def test_the_default_store_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STORE_SETTING, raising=False)
    assert store_kind() == "sqlite"


def test_an_unknown_store_is_one_line_naming_the_setting_and_the_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STORE_SETTING, "mysql")
    with pytest.raises(ValueError, match=rf"^{STORE_SETTING}='mysql' is not a store: use one of sqlite, postgres"):
        store_kind()


@pytest.fixture
def repo_dir() -> Iterator[Path]:
    """A stand-in repository root. Not under pytest's tmp_path: any pytest session starting meanwhile
    resets that root to 0700, and the server (the postgres user) loses its way to its data."""
    root = Path(tempfile.mkdtemp(prefix="agentmesh-local-store-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_postgres_runs_for_the_run_with_a_database_for_each_stateful_service(
    repo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not installed():
        pytest.skip("PostgreSQL 15 not installed (make debian-deps installs postgresql-15)")
    monkeypatch.setenv(STORE_SETTING, "postgres")
    monkeypatch.delenv("AGENTMESH_AGENT_DATABASE_URL", raising=False)
    monkeypatch.delenv("AGENTMESH_RAG_DATABASE_URL", raising=False)
    cluster = LocalPostgres(repo_dir / "var" / "postgres")

    async with local_store(repo_dir) as store:
        assert cluster.running()
        urls = {name: url.rsplit("/", 1)[1] for name, url in store.env.items()}
        assert urls == {"AGENTMESH_AGENT_DATABASE_URL": "agent", "AGENTMESH_RAG_DATABASE_URL": "rag"}
        cluster.port = int(store.env["AGENTMESH_AGENT_DATABASE_URL"].rsplit(":", 1)[1].split("/")[0])
        assert cluster.psql("SELECT current_database()", database="agent").strip() == "agent"

    assert not cluster.running()


HOLD_THE_STORE = """
import asyncio, sys
from pathlib import Path
from tests.system import REPO
from tools.local_store import local_store

async def main() -> None:
    async with local_store(Path(sys.argv[1])) as store:
        print(store.env["AGENTMESH_AGENT_DATABASE_URL"], flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_server_stops_when_the_launcher_is_killed(repo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not installed():
        pytest.skip("PostgreSQL 15 not installed (make debian-deps installs postgresql-15)")
    monkeypatch.setenv(STORE_SETTING, "postgres")
    monkeypatch.delenv("AGENTMESH_AGENT_DATABASE_URL", raising=False)
    cluster = LocalPostgres(repo_dir / "var" / "postgres")
    with subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_STORE, str(repo_dir)], cwd=REPO, stdout=subprocess.PIPE, text=True
    ) as launcher:
        assert launcher.stdout is not None
        assert launcher.stdout.readline().startswith("postgresql://")
        assert cluster.running()
        server = int((cluster.data_dir / "postmaster.pid").read_text().split()[0])

        launcher.kill()  # SIGKILL: the launcher stops nothing itself

    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(server).wait(60)  # raises TimeoutExpired while the server lives on
    assert not cluster.running()
