"""The real grpcurl binary can list, describe and call every service through reflection."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.system import System

GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")


async def grpcurl(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        GRPCURL, "-plaintext", "-max-time", "10", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=20)
    assert process.returncode == 0, f"grpcurl {' '.join(args)} failed: {err.decode()}"
    return out.decode()


@pytest.mark.parametrize("server", ["gateway", "agent", "rag"])
async def test_list_and_describe_every_server(system: System, server: str) -> None:
    listed = (await grpcurl(system.address(server), "list")).split()
    expected = {
        "gateway": {"agentmesh.agent.v1.AgentService", "agentmesh.rag.v1.RagService"},
        "agent": {"agentmesh.agent.v1.AgentService"},
        "rag": {"agentmesh.rag.v1.RagService"},
    }[server]
    assert expected | {"grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"} <= set(listed)
    assert "grpc.reflection.v1alpha.ServerReflection" in listed
    # `describe` with no symbol resolves every listed service, reflection v1 included.
    described = await grpcurl(system.address(server), "describe")
    for service in expected:
        assert f"{service} is a service" in described


async def test_describe_shows_request_messages_and_http_annotations(system: System) -> None:
    described = await grpcurl(system.gateway_address, "describe", "agentmesh.agent.v1.AgentService")
    assert "rpc CreateRun ( .agentmesh.agent.v1.CreateRunRequest )" in described
    assert 'post:"/v1/runs"' in described
    message = await grpcurl(system.gateway_address, "describe", "agentmesh.agent.v1.CreateRunRequest")
    assert "request_id" in message and "question" in message


async def test_create_run_with_json_through_the_gateway(system: System) -> None:
    out = await grpcurl(
        "-d", json.dumps({"question": "What does the refund policy say?", "requestId": "grpcurl-1"}),
        system.gateway_address, "agentmesh.agent.v1.AgentService/CreateRun",
    )  # fmt: skip
    run = json.loads(out)["run"]
    assert run["runId"].startswith("run_")
    # CreateRun answers at once; the workflow goes on in the background.
    assert run["state"] == "STATE_PROCESSING"


@pytest.mark.parametrize("server", ["gateway", "agent", "rag"])
async def test_health_check_on_every_server(system: System, server: str) -> None:
    out = await grpcurl(system.address(server), "grpc.health.v1.Health/Check")
    assert json.loads(out) == {"status": "SERVING"}
