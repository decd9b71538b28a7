"""The real system with auth on every service, rate limits and breakers at the gateway."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from interceptors.circuit_breaker import BreakerPolicy
from interceptors.rate_limit import Limit, RateLimitPolicy
from runtime.resilience import UpstreamResilience
from runtime.security import AuthSettings
from tests.system import System, start_agent, start_gateway, start_rag
from tools.dev_tokens import generate_private_key, mint, public_jwk

KID = "mesh-test-1"
SEARCH = "/agentmesh.rag.v1.RagService/Search"


@dataclass(frozen=True)
class Issuer:
    private_key: Any

    def token(self, subject: str, *scopes: str) -> str:
        return mint(key=self.private_key, algorithm="ES256", subject=subject, scopes=scopes, kid=KID)

    def bearer(self, subject: str, *scopes: str) -> tuple[tuple[str, str]]:
        return (("authorization", f"Bearer {self.token(subject, *scopes)}"),)


@pytest.fixture(scope="session")
def issuer() -> Issuer:
    return Issuer(generate_private_key("ES256"))


@pytest.fixture
def auth_settings(tmp_path: Path, issuer: Issuer) -> AuthSettings:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [public_jwk(issuer.private_key, kid=KID)]}))
    return AuthSettings(jwks_file=jwks)


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
