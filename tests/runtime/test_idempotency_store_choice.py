"""Which idempotency store a service gets: shared once the service has a shared database."""

from __future__ import annotations

import uuid
from pathlib import Path

import grpc
import pytest

from agentmesh.agent.v1 import agent_service_pb2 as agent_pb
from agentmesh.agent.v1 import agent_service_pb2_grpc as agent_grpc
from interceptors.idempotency import IdempotencyStore
from runtime.bootstrap import ManagedServer
from runtime.chains import _store
from runtime.database import open_database
from runtime.settings_errors import InvalidSetting, load_settings
from services.agent.config import AgentSettings
from services.agent.server import build as build_agent

UNREACHABLE = "postgresql://agentmesh@127.0.0.1:1/agent"


async def keys_in(url: str, sqlite_path: Path = Path("unused")) -> list[str]:
    db = await open_database(url, sqlite_path=sqlite_path, setting="TEST")
    try:
        return [row[0] for row in await db.fetch_all("SELECT key FROM idempotency_keys ORDER BY key")]
    finally:
        await db.close()


async def claim_and_close(store: IdempotencyStore) -> None:
    try:
        assert await store.claim("k", "fp", "owner", lease=60) is None
    finally:
        await store.close()


@pytest.mark.postgres
async def test_a_service_on_a_shared_database_keeps_its_idempotency_keys_there(
    tmp_path: Path, postgres_url: str
) -> None:
    await claim_and_close(_store(AgentSettings(data_dir=tmp_path), "agent", postgres_url))
    assert await keys_in(postgres_url) == ["agent:k"]
    assert not (tmp_path / "agent-idempotency.sqlite3").exists()


async def test_an_explicit_store_wins_and_the_embedded_default_stays_sqlite(tmp_path: Path) -> None:
    explicit, embedded = tmp_path / "explicit", tmp_path / "embedded"
    await claim_and_close(_store(AgentSettings(data_dir=explicit, idempotency_store="sqlite"), "agent", UNREACHABLE))
    await claim_and_close(_store(AgentSettings(data_dir=embedded), "agent", ""))
    for data_dir in (explicit, embedded):
        path = data_dir / "agent-idempotency.sqlite3"
        assert await keys_in("", path) == ["k"], "a SQLite file is the service's own: keys unprefixed"


def test_postgres_without_a_url_names_the_settings(tmp_path: Path) -> None:
    with pytest.raises(InvalidSetting, match="AGENTMESH_AGENT_IDEMPOTENCY_DATABASE_URL"):
        _store(AgentSettings(data_dir=tmp_path, idempotency_store="postgres"), "agent", "")


@pytest.mark.postgres
async def test_a_postgresql_asyncpg_url_the_settings_accept_serves_the_agent_and_holds_its_keys(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    asyncpg_url = postgres_url.replace("postgresql://", "postgresql+asyncpg://", 1)
    for name, value in {
        "DATABASE_URL": asyncpg_url,
        "DATA_DIR": str(tmp_path),
        "PORT": "0",
        "RAG_ENDPOINTS": '["127.0.0.1:1"]',
        "DRAIN_DELAY_S": "0",
        "GRACE_PERIOD_S": "1",
    }.items():
        monkeypatch.setenv(f"AGENTMESH_AGENT_{name}", value)
    settings = load_settings(AgentSettings)  # as `python -m services.agent` reads them

    server = ManagedServer(await build_agent(settings))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            agent = agent_grpc.AgentServiceStub(channel)
            request = agent_pb.CreateRunRequest(question="How long do refunds take?", request_id=str(uuid.uuid4()))
            first = await agent.CreateRun(request, timeout=10)
            replay = await agent.CreateRun(request, timeout=10)
    finally:
        await server.stop()

    assert replay.run.run_id == first.run.run_id
    keys = await keys_in(postgres_url)
    assert keys and all(key.startswith("agent:") for key in keys), "the keys are in the service's database"
