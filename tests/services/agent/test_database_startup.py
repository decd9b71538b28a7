"""An agent whose PostgreSQL is not up yet: alive, NOT_SERVING, one log line naming the setting,
and SERVING once the database answers (no crash loop, no restart)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.system import health_status, spawn, wait_until
from tools.postgres_local import LocalPostgres
from tools.serving import wait_serving

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


@pytest.mark.timeout(120)
async def test_an_agent_waits_not_serving_for_its_database_and_serves_once_it_is_up(
    tmp_path: Path, unstarted_postgres: LocalPostgres
) -> None:
    cluster = unstarted_postgres
    env = {
        "AGENTMESH_AGENT_PORT": "0",
        "AGENTMESH_AGENT_PORT_FILE": str(tmp_path / "agent.port"),
        "AGENTMESH_AGENT_DATA_DIR": str(tmp_path / "agent"),
        "AGENTMESH_AGENT_DATABASE_URL": cluster.url("postgres"),
    }
    agent = spawn("services.agent", env, tmp_path, timeout_s=60)
    try:

        async def not_serving() -> bool:
            try:
                return await health_status(agent.address) == "NOT_SERVING"
            except Exception:
                return False

        await wait_until(not_serving, timeout_s=30)
        await wait_until(lambda: asyncio.to_thread(lambda: "database unreachable" in agent.logs()), timeout_s=30)
        assert agent.process.poll() is None
        await asyncio.to_thread(cluster.start)
        await wait_serving("agent", agent.address, exit_code=agent.process.poll, within=60)
        lines = [line for line in agent.logs().splitlines() if "database unreachable" in line]
    finally:
        agent.kill()
    assert len(lines) == 1, lines
    assert "AGENTMESH_AGENT_DATABASE_URL" in lines[0]
