"""The console shows what a caller's real Envoy keeps traffic off: outlier ejections and failed health checks.

A gateway sidecar rendered from the policy calls two stand-in agent instances; one fails every
call until outlier detection ejects it. Each stand-in also has a plaintext "app" port (what the
console's discovery knows, as in the local layout, where Envoy dials the sidecar's port instead)
that answers its health check SERVING: only Envoy knows the instance is out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from console.config import ConsoleSettings
from console.envoy_hosts import EnvoyHosts
from console.server import running_console
from mesh.policy import Policy
from tests.mesh.conftest import MeshCerts, call, caller_sidecar, outbound_channel, tuned
from tests.mesh.test_resilience import CREATE_RUN, SEARCH, Backends, Envoys, health_checked_rags
from tests.ports import free_port

pytestmark = pytest.mark.envoy


def _address(port: int) -> str:
    return f"127.0.0.1:{port}"


async def test_an_instance_envoy_ejected_is_ejected_on_the_console_s_topology(
    policy: Policy, mesh_certs: MeshCerts, backends: Backends, envoys: Envoys, tmp_path: Path
) -> None:
    healthy = await backends("agent-healthy", certs=mesh_certs("agent"))
    broken = await backends("agent-broken", certs=mesh_certs("agent"))
    healthy_app = await backends("agent-healthy-app")
    broken_app = await backends("agent-broken-app")
    rag = await backends("rag", certs=mesh_certs("rag"))
    canary = policy.services["agent"].canary
    assert canary is not None
    no_canary = tuned(policy, "agent", canary=canary.model_copy(update={"weights": {"v1": 100, "v2": 0}}))
    upstreams = {"agent": {"v1": [healthy, broken], "v2": [healthy]}, "rag": {"v1": [rag]}}
    envoy = await envoys(caller_sidecar(no_canary, caller="gateway", upstreams=upstreams, certs=mesh_certs), "gw")
    broken.always_fail = grpc.StatusCode.INTERNAL
    threshold = policy.services["agent"].outlier_detection.consecutive_errors

    async with await outbound_channel(envoy, "agent") as channel:
        for _ in range(threshold * 2):  # round robin: the broken one sees `threshold` failures in a row
            try:
                await call(channel, CREATE_RUN)
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.INTERNAL
    assert await envoy.stat_reaching("cluster.agent_v1.outlier_detection.ejections_enforced_total", 1) == 1

    settings = ConsoleSettings(
        port=0,
        otlp_port=0,
        prometheus_url=f"http://127.0.0.1:{free_port()}",  # none: the topology comes from discovery
        targets={"agent": [_address(healthy_app.port), _address(broken_app.port)]},
        envoy_admins={"gateway-v1": envoy.admin_url},
        envoy_upstreams={
            _address(healthy.port): _address(healthy_app.port),
            _address(broken.port): _address(broken_app.port),
        },
        refresh_s=0.5,
        _env_file=None,
    )
    async with (
        running_console(settings) as console,
        aiohttp.ClientSession() as http,
        http.get(f"{console.url}/api/overview") as response,
    ):
        overview: dict[str, Any] = await response.json()

    topology = overview["topology"]
    assert topology["ejection_source"] == "envoy"
    assert "envoy" not in overview["problems"]
    [agent] = [n for n in topology["nodes"] if n["id"] == "agent"]
    instances = {i["address"]: i for i in agent["instances"]}
    ejected = instances[_address(broken_app.port)]
    assert ejected["health"] == "ejected"
    assert ejected["ejected_by"] == [{"reporter": "gateway-v1", "cluster": "agent_v1", "reason": "outlier detection"}]
    assert instances[_address(healthy_app.port)]["health"] == "passing"
    assert instances[_address(healthy_app.port)]["ejected_by"] == []
    assert agent["health"] == "ejected"


async def test_a_failed_active_health_check_is_reported_and_clears_when_the_instance_serves_again(
    policy: Policy, mesh_certs: MeshCerts, backends: Backends, envoys: Envoys
) -> None:
    envoy, rag_a, rag_b = await health_checked_rags(policy, mesh_certs, backends, envoys, name="gw")
    hosts = EnvoyHosts({"gateway-v1": envoy.admin_url}, {})
    try:
        assert await envoy.stat_reaching("cluster.rag_v1.health_check.failure", 1) >= 1
        ejections, problems = await hosts.read()
        assert problems == []
        assert [e.reason for e in ejections[_address(rag_b.port)]] == ["active health check"]
        assert _address(rag_a.port) not in ejections

        await rag_b.set_serving(True)
        assert await envoy.stat_reaching("cluster.rag_v1.membership_healthy", 2) == 2
        async with await outbound_channel(envoy, "rag") as channel:
            await call(channel, SEARCH)
        ejections, _ = await hosts.read()
        assert _address(rag_b.port) not in ejections
    finally:
        await hosts.aclose()


async def test_a_sidecar_that_does_not_answer_is_named_as_a_problem() -> None:
    hosts = EnvoyHosts({"agent-v1": f"http://127.0.0.1:{free_port()}"}, {})
    try:
        ejections, problems = await hosts.read()
    finally:
        await hosts.aclose()
    assert ejections == {}
    assert len(problems) == 1 and problems[0].startswith("agent-v1's Envoy admin at http://127.0.0.1:")
