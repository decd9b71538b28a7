"""The real system with auth on every service, rate limits and breakers at the gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from interceptors.circuit_breaker import BreakerPolicy
from interceptors.rate_limit import Limit, RateLimitPolicy
from runtime.resilience import UpstreamResilience
from runtime.security import AuthSettings
from tests.services.issuer import Issuer
from tests.system import System, start_agent, start_gateway, start_rag

SEARCH = "/agentmesh.rag.v1.RagService/Search"


@pytest.fixture(scope="session")
def issuer() -> Issuer:
    return Issuer.generate(kid="mesh-test-1")


@pytest.fixture
def auth_settings(tmp_path: Path, issuer: Issuer) -> AuthSettings:
    return issuer.auth_settings(tmp_path)


@pytest.fixture
async def secured_system(tmp_path: Path, auth_settings: AuthSettings) -> AsyncIterator[System]:
    rag = await start_rag(tmp_path, auth=auth_settings)
    agent = await start_agent(tmp_path, f"127.0.0.1:{rag.port}", auth=auth_settings)
    gateway = await start_gateway(
        {"agent": [f"127.0.0.1:{agent.port}"], "rag": [f"127.0.0.1:{rag.port}"]},
        auth=auth_settings,
        rate_limits=RateLimitPolicy(limits={SEARCH: Limit(rate_per_second=0.01, burst=3)}),
        upstream_resilience=UpstreamResilience(breaker=BreakerPolicy(consecutive_failures=3, open_seconds=60)),
    )
    system = System(rag=rag, agent=agent, gateway=gateway)
    try:
        yield system
    finally:
        for server in (gateway, agent, rag):
            await server.stop()
