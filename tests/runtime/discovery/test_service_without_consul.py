"""A real service whose Consul agent is down at start still serves, and registers once Consul is back."""

from __future__ import annotations

import asyncio
from pathlib import Path

from runtime.discovery.consul_client import ConsulAddress, open_consul
from tests.doubles.consul_fixtures import ConsulUnderTest, check_statuses, health_until
from tests.system import spawn_serving
from tools.consul_double import ConsulAgentDouble


async def test_rag_serves_while_consul_is_down_and_registers_when_it_returns(
    consul: ConsulUnderTest, tmp_path: Path
) -> None:
    double = consul.require_double("cannot take a real agent down and up again from a test")
    port = double.port
    await double.stop()
    env = {
        "AGENTMESH_DISCOVERY": "consul",
        "AGENTMESH_CONSUL_HTTP_ADDR": f"127.0.0.1:{port}",
        "AGENTMESH_CHECK_INTERVAL_SECONDS": "0.2",
        "AGENTMESH_RAG_PORT": "0",
        "AGENTMESH_RAG_PORT_FILE": str(tmp_path / "rag.port"),
        "AGENTMESH_RAG_DATA_DIR": str(tmp_path / "data"),
        "AGENTMESH_RAG_DRAIN_DELAY_S": "0",
        "AGENTMESH_RAG_LOG_FORMAT": "console",
    }
    # SERVING with no Consul at all (spawn_serving waits for it; the port file alone comes earlier).
    rag = await spawn_serving("services.rag", env, tmp_path)
    try:
        async with ConsulAgentDouble(port=port, min_check_interval=0.1) as revived:
            client = open_consul(ConsulAddress(revived.http_addr))
            try:
                entries = await health_until(client, "rag", lambda e: check_statuses(e) == ["passing"])
                assert entries[0]["Service"]["Port"] == rag.port
            finally:
                await client.close()
            assert await asyncio.to_thread(rag.terminate) == 0
        logs = rag.logs()
        assert "consul.registration.unreachable" in logs
        assert "yes, without registration" in logs
    finally:
        await asyncio.to_thread(rag.kill)
