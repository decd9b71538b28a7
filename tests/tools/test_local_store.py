"""`make run STORE=postgres`: one local PostgreSQL for the run, a database per service, stopped after."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.local_store import STORE_SETTING, local_store, store_kind
from tools.postgres_local import LocalPostgres, installed


def test_the_default_store_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STORE_SETTING, raising=False)
    assert store_kind() == "sqlite"


def test_an_unknown_store_is_one_line_naming_the_setting_and_the_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STORE_SETTING, "mysql")
    with pytest.raises(ValueError, match=rf"^{STORE_SETTING}='mysql' is not a store: use one of sqlite, postgres"):
        store_kind()


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_postgres_runs_for_the_run_with_a_database_for_each_stateful_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not installed():
        pytest.skip("PostgreSQL 15 not installed (make debian-deps installs postgresql-15)")
    monkeypatch.setenv(STORE_SETTING, "postgres")
    monkeypatch.delenv("AGENTMESH_AGENT_DATABASE_URL", raising=False)
    monkeypatch.delenv("AGENTMESH_RAG_DATABASE_URL", raising=False)
    cluster = LocalPostgres(tmp_path / "var" / "postgres")

    async with local_store(tmp_path) as store:
        assert cluster.running()
        urls = {name: url.rsplit("/", 1)[1] for name, url in store.env.items()}
        assert urls == {"AGENTMESH_AGENT_DATABASE_URL": "agent", "AGENTMESH_RAG_DATABASE_URL": "rag"}
        port = int(store.env["AGENTMESH_AGENT_DATABASE_URL"].rsplit(":", 1)[1].split("/")[0])
        cluster.port = port
        assert cluster.psql("SELECT current_database()", database="agent").strip() == "agent"

    assert not cluster.running()
