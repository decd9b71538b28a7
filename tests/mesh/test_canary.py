"""The agent canary: `version: v2` pins v2, everything else splits 90/10 by weight."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import NamedTuple

import pytest

from mesh.envoy_config import Config
from mesh.envoy_process import EnvoyProcess
from mesh.policy import Policy
from tests.mesh.backend import Backend
from tests.mesh.conftest import MeshCerts, call, caller_sidecar, outbound_channel

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

GET_RUN = "/agentmesh.agent.v1.AgentService/GetRun"
CALLS = 1000
# Calls in flight at once: enough to exercise Envoy's picking under concurrency, few enough that
# queueing on a busy 2-core machine never approaches the policy's 600 ms per-try timeout.
IN_FLIGHT = 10


class Canary(NamedTuple):
    sidecar: EnvoyProcess
    v1: Backend


@pytest.fixture
async def canary_sidecar(
    policy: Policy,
    mesh_certs: MeshCerts,
    backends: Callable[..., Awaitable[Backend]],
    envoys: Callable[[Config, str], Awaitable[EnvoyProcess]],
) -> Canary:
    """The gateway's sidecar in front of agent v1, agent v2 (the canary) and one rag."""
    v1 = await backends("agent-v1", certs=mesh_certs("agent"))
    v2 = await backends("agent-v2", certs=mesh_certs("agent"))
    rag = await backends("rag-v1", certs=mesh_certs("rag"))
    config = caller_sidecar(
        policy,
        caller="gateway",
        upstreams={"agent": {"v1": [v1], "v2": [v2]}, "rag": {"v1": [rag]}},
        certs=mesh_certs,
    )
    return Canary(await envoys(config, "gateway-sidecar"), v1)


async def test_unpinned_traffic_splits_by_the_policy_weights_within_tolerance(
    policy: Policy, canary_sidecar: Canary
) -> None:
    envoy = canary_sidecar.sidecar
    channel = await outbound_channel(envoy, "agent")
    async with channel:
        answered: Counter[str] = Counter()
        for _ in range(CALLS // IN_FLIGHT):
            answered.update(await asyncio.gather(*(call(channel, GET_RUN) for _ in range(IN_FLIGHT))))

    assert answered.total() == CALLS
    canary = policy.services["agent"].canary
    assert canary is not None
    expected_v2 = CALLS * canary.weights["v2"] / 100
    # Binomial spread at n=1000, p=0.1 is ~9.5 calls; 45 calls is ~4.7 standard deviations.
    assert abs(answered["agent-v2"] - expected_v2) <= 45, answered
    assert await envoy.stat_reaching("cluster.agent_v2.upstream_rq_total", answered["agent-v2"]) == answered["agent-v2"]


async def test_the_version_header_pins_every_call_to_the_canary(canary_sidecar: Canary) -> None:
    envoy, v1 = canary_sidecar
    async with await outbound_channel(envoy, "agent") as channel:
        answered = await asyncio.gather(*(call(channel, GET_RUN, metadata=[("version", "v2")]) for _ in range(100)))

    assert set(answered) == {"agent-v2"}
    assert v1.total_calls == 0
