"""Which idempotency store a service gets: shared once the service has a shared database."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from interceptors.idempotency import PostgresStore, SQLiteStore
from runtime.chains import _store
from runtime.settings_errors import InvalidSetting
from services.agent.config import AgentSettings

URL = "postgresql://agentmesh@127.0.0.1:5432/agent"


def test_a_service_on_a_shared_database_keeps_its_idempotency_keys_there(tmp_path: Path) -> None:
    assert isinstance(_store(AgentSettings(data_dir=tmp_path), "agent", URL), PostgresStore)


def test_an_explicit_store_wins_and_the_embedded_default_stays_sqlite(tmp_path: Path) -> None:
    explicit = _store(AgentSettings(data_dir=tmp_path, idempotency_store="sqlite"), "agent", URL)
    embedded = _store(AgentSettings(data_dir=tmp_path), "agent", "")
    assert isinstance(explicit, SQLiteStore)
    assert isinstance(embedded, SQLiteStore)
    for store in (explicit, embedded):
        asyncio.run(store.close())


def test_postgres_without_a_url_names_the_settings(tmp_path: Path) -> None:
    with pytest.raises(InvalidSetting, match="AGENTMESH_AGENT_IDEMPOTENCY_DATABASE_URL"):
        _store(AgentSettings(data_dir=tmp_path, idempotency_store="postgres"), "agent", "")
