"""Caller-side traffic policy under real traffic: retries, timeouts, breakers, ejection, health, faults.

Each test drives a gateway sidecar rendered from the policy at stand-in rag/agent instances
and reads Envoy's admin /stats to prove the mechanism fired, not just that calls failed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import grpc
import pytest

from mesh.envoy_config import Config
from mesh.envoy_process import EnvoyProcess
from mesh.policy import ConnectionPool, HealthCheck, Policy
from tests.mesh.backend import Backend
from tests.mesh.conftest import MeshCerts, call, caller_sidecar, outbound_channel, tuned

pytestmark = pytest.mark.envoy

SEARCH = "/agentmesh.rag.v1.RagService/Search"  # a read: retried
INGEST = "/agentmesh.rag.v1.RagService/Ingest"  # a write: never retried
GET_RUN = "/agentmesh.agent.v1.AgentService/GetRun"

Backends = Callable[..., Awaitable[Backend]]
Envoys = Callable[[Config, str], Awaitable[EnvoyProcess]]


async def _gateway_sidecar(
    policy: Policy, mesh_certs: MeshCerts, backends: Backends, envoys: Envoys, *, rag_instances: int = 1
) -> tuple[EnvoyProcess, list[Backend], Backend]:
    rag = [await backends(f"rag-{i}", certs=mesh_certs("rag")) for i in range(rag_instances)]
    agent = await backends("agent", certs=mesh_certs("agent"))
    config = caller_sidecar(
        policy, caller="gateway", upstreams={"agent": {"v1": [agent], "v2": [agent]}, "rag": {"v1": rag}},
        certs=mesh_certs,
    )  # fmt: skip
    return await envoys(config, "gateway-sidecar"), rag, agent


async def test_a_safe_method_is_retried_on_transient_codes(
    policy: Policy, mesh_certs: MeshCerts, backends: Backends, envoys: Envoys
) -> None:
    envoy, [rag], _ = await _gateway_sidecar(policy, mesh_certs, backends, envoys)
    rag.fail_next = 2  # UNAVAILABLE twice, then fine

    async with await outbound_channel(envoy, "rag") as channel:
        assert await call(channel, SEARCH) == "rag-0"

    assert rag.calls[SEARCH] == 3
    assert await envoy.stat("cluster.rag_v1.upstream_rq_retry") == 2
    assert await envoy.stat("cluster.rag_v1.upstream_rq_retry_success") == 1


async def test_a_method_with_side_effects_is_never_retried(
    policy: Policy, mesh_certs: MeshCerts, backends: Backends, envoys: Envoys
) -> None:
    envoy, [rag], _ = await _gateway_sidecar(policy, mesh_certs, backends, envoys)
    rag.fail_next = 1

    async with await outbound_channel(envoy, "rag") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await call(channel, INGEST)

    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert rag.calls[INGEST] == 1
    assert await envoy.stat("cluster.rag_v1.upstream_rq_retry") == 0


async def _short_ingest_timeout(
    policy: Policy, mesh_certs: MeshCerts, backends: Backends, envoys: Envoys
) -> EnvoyProcess:
    rag_policy = policy.services["rag"]
    short = [*rag_policy.routes[:-1], rag_policy.routes[-1].model_copy(update={"timeout": "300ms"})]
    envoy, _, _ = await _gateway_sidecar(tuned(policy, "rag", routes=short), mesh_certs, backends, envoys)
    return envoy


async def test_a_route_timeout_ends_a_slow_call_as_deadline_exceeded(
    policy: Policy, mesh_certs: MeshCerts, backends: Backends, envoys: Envoys
) -> None:
    envoy = await _short_ingest_timeout(policy, mesh_certs, backends, envoys)

    async with await outbound_channel(envoy, "rag") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            # The caller's own 10 s deadline is capped at the route's 300 ms.
            await call(channel, INGEST, metadata=[("x-test-sleep-ms", "3000")], timeout=10)

    assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert await envoy.stat("http.outbound_rag.downstream_rq_max_duration_reached") == 1


async def test_a_route_timeout_also_bounds_callers_that_set_no_deadline(
    policy: Policy, mesh_certs: MeshCerts, backends: Backends, envoys: Envoys
) -> None:
    envoy = await _short_ingest_timeout(policy, mesh_certs, backends, envoys)

    async with await outbound_channel(envoy, "rag") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await call(channel, INGEST, metadata=[("x-test-sleep-ms", "3000")], timeout=None)

    assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert await envoy.stat("http.outbound_rag.downstream_rq_max_duration_reached") == 1


async def test_the_circuit_breaker_sheds_calls_beyond_its_limits(
    policy: Policy, mesh_certs: MeshCerts, backends: Backends, envoys: Envoys
) -> None:
    tiny = ConnectionPool(max_connections=1, max_pending_requests=1, max_requests=1, max_retries=0)
    envoy, [rag], _ = await _gateway_sidecar(tuned(policy, "rag", connection_pool=tiny), mesh_certs, backends, envoys)
    rag.delay = 0.5

    async with await outbound_channel(envoy, "rag") as channel:
        results = await asyncio.gather(*(call(channel, INGEST) for _ in range(6)), return_exceptions=True)

    shed = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert shed, results
    assert all(r.code() == grpc.StatusCode.UNAVAILABLE for r in shed)
    stats = await envoy.stats("cluster.rag_v1.upstream_")
    # Which limit trips first depends on timing (one connection, one stream, one pending slot).
    overflows = sum(value for name, value in stats.items() if name.endswith("_overflow"))
    assert overflows == len(shed), stats
    assert rag.total_calls == len(results) - len(shed)


async def test_an_instance_returning_errors_is_ejected(
    policy: Policy, mesh_certs: MeshCerts, backends: Backends, envoys: Envoys
) -> None:
    envoy, [healthy, broken], _ = await _gateway_sidecar(policy, mesh_certs, backends, envoys, rag_instances=2)
    broken.always_fail = grpc.StatusCode.INTERNAL
    threshold = policy.services["rag"].outlier_detection.consecutive_errors

    async with await outbound_channel(envoy, "rag") as channel:
        for _ in range(threshold * 2):  # round robin: the broken one sees `threshold` in a row
            try:
                await call(channel, INGEST)
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.INTERNAL
        assert await envoy.stat("cluster.rag_v1.outlier_detection.ejections_enforced_total") == 1
        broken_calls = broken.total_calls
        answered = await asyncio.gather(*(call(channel, INGEST) for _ in range(20)))

    assert set(answered) == {healthy.name}
    assert broken.total_calls == broken_calls


async def test_active_grpc_health_checks_keep_traffic_off_a_not_serving_instance(
    policy: Policy, mesh_certs: MeshCerts, backends: Backends, envoys: Envoys
) -> None:
    quick = HealthCheck(interval="200ms", timeout="1s", unhealthy_threshold=1, healthy_threshold=1)
    rag_a = await backends("rag-a", certs=mesh_certs("rag"))
    rag_b = await backends("rag-b", certs=mesh_certs("rag"))
    await rag_b.set_serving(False)
    agent = await backends("agent", certs=mesh_certs("agent"))
    config = caller_sidecar(
        tuned(policy, "rag", health_check=quick), caller="gateway",
        upstreams={"agent": {"v1": [agent], "v2": [agent]}, "rag": {"v1": [rag_a, rag_b]}}, certs=mesh_certs,
    )  # fmt: skip
    envoy = await envoys(config, "gateway-sidecar")

    async with await outbound_channel(envoy, "rag") as channel:
        answered = await asyncio.gather(*(call(channel, INGEST) for _ in range(20)))
        assert set(answered) == {"rag-a"}
        assert await envoy.stat("cluster.rag_v1.health_check.failure") >= 1
        assert await envoy.stat("cluster.rag_v1.membership_healthy") == 1

        await rag_b.set_serving(True)
        await _until(lambda: envoy.stat("cluster.rag_v1.membership_healthy"), 2)
        answered = await asyncio.gather(*(call(channel, INGEST) for _ in range(20)))

    assert set(answered) == {"rag-a", "rag-b"}


async def test_a_delay_fault_is_injected_only_when_its_header_asks(
    policy: Policy, mesh_certs: MeshCerts, backends: Backends, envoys: Envoys
) -> None:
    [fault] = policy.faults_for("rag")
    assert fault.delay is not None
    envoy, [rag], _ = await _gateway_sidecar(policy, mesh_certs, backends, envoys)

    async with await outbound_channel(envoy, "rag") as channel:
        assert await call(channel, SEARCH) == "rag-0"
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await call(channel, SEARCH, metadata=[(policy.fault_header, fault.name)], timeout=0.5)

    assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert await envoy.stat("http.outbound_rag.fault.delays_injected") == 1


async def test_an_abort_fault_fails_the_call_before_it_reaches_the_service(
    policy: Policy, mesh_certs: MeshCerts, backends: Backends, envoys: Envoys
) -> None:
    [fault] = policy.faults_for("agent")
    assert fault.abort == "unavailable"
    envoy, _, agent = await _gateway_sidecar(policy, mesh_certs, backends, envoys)

    async with await outbound_channel(envoy, "agent") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await call(channel, GET_RUN, metadata=[(policy.fault_header, fault.name)])

    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert await envoy.stat("http.outbound_agent.fault.aborts_injected") == 1
    assert agent.total_calls == 0


async def _until(read: Callable[[], Awaitable[int]], wanted: int, *, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while (value := await read()) != wanted:
        if time.monotonic() > deadline:
            raise AssertionError(f"still {value}, wanted {wanted} after {within}s")
        await asyncio.sleep(0.1)

