"""The ``consul`` fixture: the Consul agent double, and a real agent too when ``CONSUL_HTTP_ADDR`` is set.

Every test that takes ``consul`` runs once per backend: ``[double]`` always, ``[real-agent]``
against ``$CONSUL_HTTP_ADDR`` (and ``$CONSUL_HTTP_TOKEN``) or skipped with a reason saying so.
Names and KV prefixes come from ``consul.unique(...)`` so runs never collide on a shared agent.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from runtime.discovery.consul_client import ConsulAddress
from tests.doubles.consul_agent import ConsulAgentDouble

REAL_AGENT_ENV = "CONSUL_HTTP_ADDR"


@dataclass
class ConsulUnderTest:
    address: ConsulAddress
    double: ConsulAgentDouble | None  # None when this is a real agent

    @property
    def is_real(self) -> bool:
        return self.double is None

    def unique(self, name: str) -> str:
        return f"{name}-{uuid.uuid4().hex[:8]}"

    def require_double(self, why: str) -> ConsulAgentDouble:
        if self.double is None:
            pytest.skip(f"real Consul agent: {why}")
        return self.double


@pytest.fixture(params=["double", "real-agent"])
async def consul(request: pytest.FixtureRequest) -> AsyncIterator[ConsulUnderTest]:
    if request.param == "real-agent":
        address = os.environ.get(REAL_AGENT_ENV)
        if not address:
            pytest.skip(f"{REAL_AGENT_ENV} is not set: ran against the Consul agent double only")
        yield ConsulUnderTest(ConsulAddress(address, token=os.environ.get("CONSUL_HTTP_TOKEN")), None)
        return
    # Reaping is sped up (Consul: every 30 s, at least 1 min critical) so the rule is testable.
    async with ConsulAgentDouble(reap_interval=0.1, min_deregister_critical_after=0.0) as double:
        yield ConsulUnderTest(ConsulAddress(double.http_addr), double)
