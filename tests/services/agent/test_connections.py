"""An agent replica's connections to PostgreSQL stay within the budget docs/database.md states
(its pool of WORKERS + 4, the query pool's 2, one LISTEN connection, the idempotency store's 3),
whatever the load."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import grpc
import pytest

from agentmesh.agent.v1 import agent_service_pb2 as agent_pb
from agentmesh.agent.v1 import agent_service_pb2_grpc as agent_grpc
from services.agent.config import POOL_HEADROOM, AgentSettings
from tests.ports import free_ports
from tests.postgres import connections_seen
from tests.services.agent.runs import settled_run
from tests.system import spawn_serving

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

WORKERS = 2
LISTEN, IDEMPOTENCY = 1, 3
QUERIES = AgentSettings.model_fields["database_query_pool_size"].default


@pytest.mark.timeout(120)
async def test_a_replica_under_concurrent_load_holds_no_more_connections_than_stated(
    tmp_path: Path, postgres_url: str
) -> None:
    [nothing_there] = free_ports(1)  # no RAG: each run's retrieval fails fast, its decision is fixed
    agent = await spawn_serving(
        "services.agent",
        {
            "AGENTMESH_AGENT_PORT": "0",
            "AGENTMESH_AGENT_PORT_FILE": str(tmp_path / "agent.port"),
            "AGENTMESH_AGENT_DATA_DIR": str(tmp_path / "agent"),
            "AGENTMESH_AGENT_DATABASE_URL": postgres_url,
            "AGENTMESH_AGENT_WORKERS": str(WORKERS),
            "AGENTMESH_AGENT_RAG_ENDPOINTS": f'["127.0.0.1:{nothing_there}"]',
            "AGENTMESH_AGENT_RETRIEVAL_TIMEOUT_S": "0.2",
            "AGENTMESH_AGENT_DECISION_ENGINE": "tests.services.agent.engines:FixedEngine",
        },
        tmp_path,
        timeout_s=60,
    )
    try:
        async with connections_seen(postgres_url) as seen, grpc.aio.insecure_channel(agent.address) as channel:
            stub = agent_grpc.AgentServiceStub(channel)

            async def create(n: int) -> str:
                request = agent_pb.CreateRunRequest(
                    question=f"How long do refunds take? ({n})", request_id=str(uuid.uuid4())
                )
                return (await stub.CreateRun(request, timeout=30)).run.run_id

            # Forty callers at once, several per connection: CreateRun handlers, idempotency records and
            # the workers' transactions all want one.
            run_ids = await asyncio.gather(*(create(n) for n in range(40)))
            for run_id in run_ids:
                await settled_run(stub, run_id, timeout_s=60)
    finally:
        agent.kill()
    assert seen and max(seen) <= WORKERS + POOL_HEADROOM + QUERIES + LISTEN + IDEMPOTENCY
