"""`make run MESH=envoy`: each app reaches its callees only through its own sidecar."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from mesh.policy import Policy
from runtime.ports import PortTaken, ensure_free
from runtime.security import AuthSettings
from tests.launchers import NO_MODEL, clean_env, kill_and_find_no_survivor, launcher, wait_up
from tests.ports import free_ports
from tools.dev_auth import DevAuth, ensure_dev_auth
from tools.local_store import LocalStore
from tools.mesh_launcher import app_env, console_stack, layout_ports, listening_ports

SQLITE = LocalStore("sqlite")


@pytest.fixture
def auth(tmp_path: Path) -> DevAuth:
    return ensure_dev_auth(tmp_path / "keys")


def test_the_gateway_reaches_agent_and_rag_through_its_sidecars_outbound_ports(policy: Policy, auth: DevAuth) -> None:
    env = app_env(policy, "gateway-v1", auth, SQLITE)
    ports = policy.local.instances["gateway-v1"]

    assert json.loads(env["AGENTMESH_GATEWAY_BACKENDS"]) == {
        callee: [f"127.0.0.1:{port}"] for callee, port in ports.outbound.items()
    }
    assert env["AGENTMESH_GATEWAY_PORT"] == str(ports.app)
    assert env["AGENTMESH_GATEWAY_HOST"] == "127.0.0.1"
    # Its HTTP side (MCP, the Agent Card) where its sidecar sends the edge's http_routes.
    assert env["AGENTMESH_GATEWAY_HTTP_PORT"] == str(ports.http)
    assert env["AGENTMESH_GATEWAY_HTTP_PUBLIC_URL"] == f"https://localhost:{policy.local.edge.port}"


def test_each_agent_version_reaches_rag_through_its_own_sidecar(policy: Policy, auth: DevAuth) -> None:
    for version in policy.services["agent"].versions:
        ports = policy.local.instances[f"agent-{version}"]
        env = app_env(policy, f"agent-{version}", auth, SQLITE)
        assert json.loads(env["AGENTMESH_AGENT_RAG_ENDPOINTS"]) == [f"127.0.0.1:{ports.outbound['rag']}"]


def test_no_app_listens_where_a_sidecar_or_another_app_does(policy: Policy) -> None:
    ports = [policy.local.edge.port, policy.local.edge.admin]
    for instance in policy.local.instances.values():
        ports += [instance.app, instance.inbound, instance.admin, *instance.outbound.values()]
        ports += [] if instance.http is None else [instance.http]
    assert len(ports) == len(set(ports))


def test_apps_leave_health_checking_of_their_callees_to_the_sidecar(policy: Policy, auth: DevAuth) -> None:
    for instance in policy.local.instances:
        assert app_env(policy, instance, auth, SQLITE)["AGENTMESH_CLIENT_HEALTH_CHECKS"] == "false"


def test_behind_the_edge_every_app_verifies_tokens_as_the_edge_does(policy: Policy, auth: DevAuth) -> None:
    for instance in policy.local.instances:
        service = instance.rpartition("-")[0]
        settings = AuthSettings.model_validate_json(
            app_env(policy, instance, auth, SQLITE)[f"AGENTMESH_{service.upper()}_AUTH"]
        )

        assert settings.jwks_file == auth.jwks_file
        assert (settings.issuer, settings.audience) == (policy.jwt.issuer, policy.jwt.audience)
        assert settings.public_methods == policy.jwt.public_methods


def test_the_agent_has_its_own_token_for_runs_it_resumes(policy: Policy, auth: DevAuth) -> None:
    for version in policy.services["agent"].versions:
        env = app_env(policy, f"agent-{version}", auth, SQLITE)
        assert Path(env["AGENTMESH_AGENT_SERVICE_TOKEN_FILE"]).read_text().strip()


def test_agent_v1_and_v2_share_one_database_and_are_told_apart_by_instance_id(
    policy: Policy, auth: DevAuth, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Even one id for everything in the environment must not make the two versions one instance.
    monkeypatch.setenv("AGENTMESH_AGENT_INSTANCE_ID", "my-laptop")
    monkeypatch.delenv("AGENTMESH_AGENT_DATA_DIR", raising=False)
    postgres = LocalStore(
        "postgres",
        {
            "AGENTMESH_AGENT_DATABASE_URL": "postgresql://agentmesh@127.0.0.1:5999/agent",
            "AGENTMESH_RAG_DATABASE_URL": "postgresql://agentmesh@127.0.0.1:5999/rag",
        },
    )
    for store in (SQLITE, postgres):
        agents = [app_env(policy, f"agent-{v}", auth, store) for v in policy.services["agent"].versions]

        # One database: the same URL, or (SQLite) the same data dir, which neither overrides.
        assert len({env.get("AGENTMESH_AGENT_DATABASE_URL") for env in agents}) == 1
        assert all("AGENTMESH_AGENT_DATA_DIR" not in env for env in agents)
        ids = [env["AGENTMESH_AGENT_INSTANCE_ID"] for env in agents]
        assert len(set(ids)) == len(agents)
        assert [i.rsplit("-", 1)[0] for i in ids] == [f"agent-{v}" for v in policy.services["agent"].versions]
    assert app_env(policy, "rag-v1", auth, postgres)["AGENTMESH_RAG_DATABASE_URL"].endswith("/rag")


def test_every_instance_exports_metrics_on_its_own_port_and_spans_to_the_console(
    policy: Policy, auth: DevAuth, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("GATEWAY", "AGENT", "RAG"):  # the defaults, whatever the caller's environment says
        monkeypatch.delenv(f"AGENTMESH_{name}_METRICS_PORT", raising=False)
        monkeypatch.delenv(f"AGENTMESH_{name}_OTLP_ENDPOINT", raising=False)
    ports = set()
    for instance in policy.local.instances:
        service = instance.rpartition("-")[0].upper()
        env = app_env(policy, instance, auth, SQLITE)
        ports.add(env[f"AGENTMESH_{service}_METRICS_PORT"])
        assert env[f"AGENTMESH_{service}_OTLP_ENDPOINT"] == "http://127.0.0.1:4317"
    assert len(ports) == len(policy.local.instances)  # agent v1 and v2 side by side


def test_every_port_of_the_layout_is_checked_before_anything_starts_with_where_the_policy_sets_it(
    policy: Policy, auth: DevAuth
) -> None:
    checked = dict(listening_ports(policy, console_stack(policy, auth)))
    layout = [policy.local.edge.port, policy.local.edge.admin]
    for instance in policy.local.instances.values():
        layout += [instance.app, instance.inbound, instance.admin, *instance.outbound.values()]
        layout += [] if instance.http is None else [instance.http]

    assert set(layout) <= set(checked)
    assert all("mesh/policy.yaml" in checked[port] for port in layout)
    assert (
        checked[policy.local.instances["rag-v1"].app]
        == "local.instances.rag-v1.app in mesh/policy.yaml, then `make mesh-render`"
    )


@pytest.mark.slow
@pytest.mark.envoy
@pytest.mark.timeout(300)
def test_the_mesh_launcher_killed_by_sigkill_leaves_no_envoy_app_or_console_behind(
    policy: Policy, tmp_path: Path
) -> None:
    # The layout's ports are fixed (mesh/policy.yaml). The tests' port bands pass over them, but the
    # apps' sit in the kernel's ephemeral range, where a connection another test (or test worker)
    # has open may hold one for a while. A `make run MESH=envoy` up on this machine holds them all.
    layout = layout_ports(policy)
    deadline = time.monotonic() + 60
    while True:
        try:
            ensure_free(layout)
            break
        except PortTaken as taken:
            if time.monotonic() > deadline:
                pytest.skip(str(taken))
            time.sleep(0.5)
    console, otlp, prometheus = free_ports(3)
    env = {
        **clean_env(),
        **NO_MODEL,
        "AGENTMESH_CONSOLE_PORT": str(console),
        "AGENTMESH_CONSOLE_OTLP_PORT": str(otlp),
        "AGENTMESH_PROMETHEUS_PORT": str(prometheus),
        **{f"AGENTMESH_{name}_DATA_DIR": str(tmp_path / name) for name in ("GATEWAY", "AGENT", "RAG")},
    }
    with launcher("tools.mesh_launcher", env, tmp_path) as (process, output):
        wait_up(process, output, within_s=240)

        commands = kill_and_find_no_survivor(process)

    assert sum("envoy" in command.split(" ", 1)[0] for command in commands) == len(policy.local.instances) + 1
    assert sum("-m services." in command for command in commands) == len(policy.local.instances)
