"""`make run MESH=envoy`: each app reaches its callees only through its own sidecar."""

from __future__ import annotations

import json

from mesh.launcher import app_env
from mesh.policy import Policy


def test_the_gateway_reaches_agent_and_rag_through_its_sidecars_outbound_ports(policy: Policy) -> None:
    env = app_env(policy, "gateway-v1")
    ports = policy.local.instances["gateway-v1"]

    assert json.loads(env["AGENTMESH_GATEWAY_BACKENDS"]) == {
        callee: [f"127.0.0.1:{port}"] for callee, port in ports.outbound.items()
    }
    assert env["AGENTMESH_GATEWAY_PORT"] == str(ports.app)
    assert env["AGENTMESH_GATEWAY_HOST"] == "127.0.0.1"


def test_each_agent_version_reaches_rag_through_its_own_sidecar(policy: Policy) -> None:
    for version in policy.services["agent"].versions:
        ports = policy.local.instances[f"agent-{version}"]
        env = app_env(policy, f"agent-{version}")
        assert json.loads(env["AGENTMESH_AGENT_RAG_ENDPOINTS"]) == [f"127.0.0.1:{ports.outbound['rag']}"]


def test_no_app_listens_where_a_sidecar_or_another_app_does(policy: Policy) -> None:
    ports = [policy.local.edge.port, policy.local.edge.admin]
    for instance in policy.local.instances.values():
        ports += [instance.app, instance.inbound, instance.admin, *instance.outbound.values()]
    assert len(ports) == len(set(ports))


def test_apps_leave_health_checking_of_their_callees_to_the_sidecar(policy: Policy) -> None:
    for instance in policy.local.instances:
        assert app_env(policy, instance)["AGENTMESH_CLIENT_HEALTH_CHECKS"] == "false"
