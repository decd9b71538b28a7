"""Caller-side traffic policy under real traffic: retries, timeouts, breakers, ejection, health, faults.

Each test drives a gateway sidecar rendered from the policy at stand-in rag/agent instances
and reads Envoy's admin /stats to prove the mechanism fired, not just that calls failed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc
import pytest

from mesh.envoy_config import Config
from mesh.envoy_process import EnvoyProcess
from mesh.policy import ConnectionPool, HealthCheck, Policy
from tests.mesh.backend import Backend
from tests.mesh.conftest import MeshCerts, call, caller_sidecar, eventually, outbound_channel, tuned

pytestmark = pytest.mark.envoy

SEARCH = "/agentmesh.rag.v1.RagService/Search"  # a read: retried
CREATE_RUN = "/agentmesh.agent.v1.AgentService/CreateRun"  # not idempotent: never retried
GET_RUN = "/agentmesh.agent.v1.AgentService/GetRun"

Backends = Callable[..., Awaitable[Backend]]
Envoys = Callable[[Config, str], Awaitable[EnvoyProcess]]


async def _gateway_sidecar(
    policy: Policy,
    mesh_certs: MeshCerts,
    backends: Backends,
    envoys: Envoys,
    *,
    agents: int = 1,
    rags: int = 1,
) -> tuple[EnvoyProcess, list[Backend], list[Backend]]:
    """The gateway's sidecar in front of stand-in agent v1 and rag instances (the canary is off)."""
    agent = [await backends(f"agent-{i}", certs=mesh_certs("agent")) for i in range(agents)]
    canary_v2 = await backends("agent-canary", certs=mesh_certs("agent"))
    rag = [await backends(f"rag-{i}", certs=mesh_certs("rag")) for i in range(rags)]
    canary = policy.services["agent"].canary
    assert canary is not None
    no_canary = tuned(policy, "agent", canary=canary.model_copy(update={"weights": {"v1": 100, "v2": 0}}))
    upstreams = {"agent": {"v1": agent, "v2": [canary_v2]}, "rag": {"v1": rag}}
    config = caller_sidecar(no_canary, caller="gateway", upstreams=upstreams, certs=mesh_certs)
    return await envoys(config, "gateway-sidecar"), agent, rag


async def test_a_safe_method_is_retried_on_transient_codes(
    policy: Policy, mesh_certs: MeshCerts, backends: Backends, envoys: Envoys
) -> None:
    envoy, _, [rag] = await _gateway_sidecar(policy, mesh_certs, backends, envoys)
    rag.fail_next = 2  # UNAVAILABLE twice, then fine

    async with await outbound_channel(envoy, "rag") as channel:
        assert await call(channel, SEARCH) == "rag-0"

    assert rag.calls[SEARCH] == 3
    assert await envoy.stat_reaching("cluster.rag_v1.upstream_rq_retry", 2) == 2
    assert await envoy.stat_reaching("cluster.rag_v1.upstream_rq_retry_success", 1) == 1


async def test_a_method_with_side_effects_is_never_retried(
    policy: Policy, mesh_certs: MeshCerts, backends: Backends, envoys: Envoys
) -> None:
    envoy, [agent], _ = await _gateway_sidecar(policy, mesh_certs, backends, envoys)
    agent.fail_next = 1

    async with await outbound_channel(envoy, "agent") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await call(channel, CREATE_RUN)

    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert agent.calls[CREATE_RUN] == 1
    assert await envoy.stat("cluster.agent_v1.upstream_rq_retry") == 0


async def _short_create_run_timeout(
    policy: Policy, mesh_certs: MeshCerts, backends: Backends, envoys: Envoys
) -> tuple[EnvoyProcess, Backend]:
    agent_policy = policy.services["agent"]
    short = [*agent_policy.routes[:-1], agent_policy.routes[-1].model_copy(update={"timeout": "300ms"})]
    envoy, [agent], _ = await _gateway_sidecar(tuned(policy, "agent", routes=short), mesh_certs, backends, envoys)
    return envoy, agent


@pytest.mark.parametrize(
    "caller_deadline", [10, None], ids=["caps a longer caller deadline", "bounds a caller that sets none"]
)
async def test_a_route_timeout(
    policy: Policy, mesh_certs: MeshCerts, backends: Backends, envoys: Envoys, caller_deadline: float | None
) -> None:
    envoy, agent = await _short_create_run_timeout(policy, mesh_certs, backends, envoys)

    async with await outbound_channel(envoy, "agent") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await call(channel, CREATE_RUN, metadata=[("x-test-sleep-ms", "3000")], deadline=caller_deadline)

    assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, failed.value.details()
    # The service is told the capped deadline, so it can stop work nobody waits for (with no
    # caller deadline, Envoy or the service itself, racing at the same instant, ends the call).
    assert agent.last_deadline is not None and agent.last_deadline <= 0.3


async def test_the_circuit_breaker_sheds_calls_beyond_its_limits(
    policy: Policy, mesh_certs: MeshCerts, backends: Backends, envoys: Envoys
) -> None:
    tiny = ConnectionPool(max_connections=1, max_pending_requests=1, max_requests=1, max_retries=0)
    envoy, [agent], _ = await _gateway_sidecar(
        tuned(policy, "agent", connection_pool=tiny), mesh_certs, backends, envoys
    )
    agent.delay = 0.5

    async with await outbound_channel(envoy, "agent") as channel:
        results = await asyncio.gather(*(call(channel, CREATE_RUN) for _ in range(6)), return_exceptions=True)

    shed = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert shed, results
    assert all(r.code() == grpc.StatusCode.UNAVAILABLE for r in shed)

    async def overflows() -> int:
        # Which limit trips first depends on timing (one connection, one stream, one pending slot).
        stats = await envoy.stats("cluster.agent_v1.upstream_")
        return sum(value for name, value in stats.items() if name.endswith("_overflow"))

    assert await eventually(overflows, len(shed)) == len(shed)
    assert agent.total_calls == len(results) - len(shed)


async def test_an_instance_returning_errors_is_ejected(
    policy: Policy, mesh_certs: MeshCerts, backends: Backends, envoys: Envoys
) -> None:
    envoy, [healthy, broken], _ = await _gateway_sidecar(policy, mesh_certs, backends, envoys, agents=2)
    broken.always_fail = grpc.StatusCode.INTERNAL
    threshold = policy.services["agent"].outlier_detection.consecutive_errors

    async with await outbound_channel(envoy, "agent") as channel:
        for _ in range(threshold * 2):  # round robin: the broken one sees `threshold` in a row
            try:
                await call(channel, CREATE_RUN)
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.INTERNAL
        assert await envoy.stat_reaching("cluster.agent_v1.outlier_detection.ejections_enforced_total", 1) == 1
        broken_calls = broken.total_calls
        answered = await asyncio.gather(*(call(channel, CREATE_RUN) for _ in range(20)))

    assert set(answered) == {healthy.name}
    assert broken.total_calls == broken_calls


async def health_checked_rags(
    policy: Policy, mesh_certs: MeshCerts, backends: Backends, envoys: Envoys, *, name: str = "gateway-sidecar"
) -> tuple[EnvoyProcess, Backend, Backend]:
    """The gateway's sidecar, checking rag's health every 200 ms, in front of rag-a and of rag-b,
    which does not serve (yet)."""
    quick = HealthCheck(interval="200ms", timeout="1s", unhealthy_threshold=1, healthy_threshold=1)
    rag_a = await backends("rag-a", certs=mesh_certs("rag"))
    rag_b = await backends("rag-b", certs=mesh_certs("rag"))
    await rag_b.set_serving(False)
    agent = await backends("agent", certs=mesh_certs("agent"))
    config = caller_sidecar(
        tuned(policy, "rag", health_check=quick), caller="gateway",
        upstreams={"agent": {"v1": [agent], "v2": [agent]}, "rag": {"v1": [rag_a, rag_b]}}, certs=mesh_certs,
    )  # fmt: skip
    return await envoys(config, name), rag_a, rag_b


async def test_active_grpc_health_checks_keep_traffic_off_a_not_serving_instance(
    policy: Policy, mesh_certs: MeshCerts, backends: Backends, envoys: Envoys
) -> None:
    envoy, _, rag_b = await health_checked_rags(policy, mesh_certs, backends, envoys)

    async with await outbound_channel(envoy, "rag") as channel:
        answered = await asyncio.gather(*(call(channel, SEARCH) for _ in range(20)))
        assert set(answered) == {"rag-a"}
        assert await envoy.stat_reaching("cluster.rag_v1.health_check.failure", 1) >= 1
        assert await envoy.stat_reaching("cluster.rag_v1.membership_healthy", 1) == 1

        await rag_b.set_serving(True)
        assert await envoy.stat_reaching("cluster.rag_v1.membership_healthy", 2) == 2
        answered = await asyncio.gather(*(call(channel, SEARCH) for _ in range(20)))

    assert set(answered) == {"rag-a", "rag-b"}


async def test_a_delay_fault_is_injected_only_when_its_header_asks(
    policy: Policy, mesh_certs: MeshCerts, backends: Backends, envoys: Envoys
) -> None:
    [fault] = policy.faults_for("rag")
    assert fault.delay is not None
    envoy, _, _ = await _gateway_sidecar(policy, mesh_certs, backends, envoys)

    async with await outbound_channel(envoy, "rag") as channel:
        assert await call(channel, SEARCH) == "rag-0"
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await call(channel, SEARCH, metadata=[(policy.fault_header, fault.name)], deadline=0.5)

    assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert await envoy.stat_reaching("http.outbound_rag.fault.delays_injected", 1) == 1


async def test_an_abort_fault_fails_the_call_before_it_reaches_the_service(
    policy: Policy, mesh_certs: MeshCerts, backends: Backends, envoys: Envoys
) -> None:
    [fault] = policy.faults_for("agent")
    assert fault.abort == "unavailable"
    envoy, [agent], _ = await _gateway_sidecar(policy, mesh_certs, backends, envoys)

    async with await outbound_channel(envoy, "agent") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await call(channel, GET_RUN, metadata=[(policy.fault_header, fault.name)])

    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert await envoy.stat_reaching("http.outbound_agent.fault.aborts_injected", 1) == 1
    assert agent.total_calls == 0
