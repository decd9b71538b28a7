"""The ``consul`` fixture: the Consul agent double, and a real agent too when ``CONSUL_HTTP_ADDR`` is set.

Every test that takes ``consul`` runs once per backend: ``[double]`` always, ``[real-agent]``
against ``$CONSUL_HTTP_ADDR`` (and ``$CONSUL_HTTP_TOKEN``) or skipped with a reason saying so.
Names and KV prefixes come from ``consul.unique(...)`` so runs never collide on a shared agent.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from runtime.discovery.consul_client import ConsulAddress
from tools.consul_double import ConsulAgentDouble

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
    # Time is compressed (Consul: checks at most every 1 s, reaping every 30 s and only after
    # 1 min critical) so that the suite stays fast; the rules themselves are unchanged.
    async with ConsulAgentDouble(
        reap_interval=0.1, min_deregister_critical_after=0.0, min_check_interval=0.1
    ) as double:
        yield ConsulUnderTest(ConsulAddress(double.http_addr), double)


async def health_until(
    client: Any, service: str, predicate: Callable[[list[dict[str, Any]]], bool], *, within: float = 20.0
) -> list[dict[str, Any]]:
    """Follow ``/v1/health/service/<service>`` with blocking queries until ``predicate(entries)``."""
    index = None
    async with asyncio.timeout(within):
        while True:
            index, entries = await client.health.service(service, index=index, wait="5s")
            if predicate(entries):
                return list(entries)


def check_statuses(entries: list[dict[str, Any]]) -> list[str]:
    """Statuses of the service checks (not the node's serfHealth) across all entries."""
    return [c["Status"] for e in entries for c in e["Checks"] if c["ServiceID"]]
