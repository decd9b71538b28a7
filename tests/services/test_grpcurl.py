"""The real grpcurl binary can list, describe and call every service through reflection."""

from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.grpcurl import grpcurl, run_grpcurl
from tests.system import System


@pytest.mark.parametrize("server", ["gateway", "agent", "rag"])
async def test_list_and_describe_every_server(system: System, server: str) -> None:
    listed = (await grpcurl(system.address(server), "list")).split()
    expected = {
        "gateway": {"agentmesh.agent.v1.AgentService", "agentmesh.rag.v1.RagService", "lf.a2a.v1.A2AService"},
        "agent": {"agentmesh.agent.v1.AgentService", "lf.a2a.v1.A2AService"},
        "rag": {"agentmesh.rag.v1.RagService"},
    }[server]
    assert expected | {"grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"} <= set(listed)
    assert "grpc.reflection.v1alpha.ServerReflection" in listed
    # `describe` with no symbol resolves every listed service, reflection v1 included.
    described = await grpcurl(system.address(server), "describe")
    for service in expected:
        assert f"{service} is a service" in described


METHODS = {
    "gateway": [
        "agentmesh.agent.v1.AgentService.CreateRun",
        "agentmesh.rag.v1.RagService.Search",
        "lf.a2a.v1.A2AService.SendMessage",
    ],
    "agent": [
        "agentmesh.agent.v1.AgentService.CreateRun",
        "agentmesh.agent.v1.AgentService.WatchRun",
        "lf.a2a.v1.A2AService.SubscribeToTask",
    ],
    "rag": ["agentmesh.rag.v1.RagService.Search", "agentmesh.rag.v1.RagService.StreamIngestDocuments"],
}


@pytest.mark.parametrize("server", ["gateway", "agent", "rag"])
async def test_describe_a_method_on_every_server(system: System, server: str) -> None:
    # grpc-go resolves method symbols to the file of their service; so must we (grpcurl asks this way).
    for method in [*METHODS[server], "grpc.health.v1.Health.Check"]:
        described = await grpcurl(system.address(server), "describe", method)
        name = method.rsplit(".", 1)[1]
        assert f"{method} is a method" in described
        assert f"rpc {name} (" in described


async def test_describing_an_unknown_method_is_symbol_not_found(system: System) -> None:
    code, _, err = await run_grpcurl(system.gateway_address, "describe", "agentmesh.agent.v1.AgentService.NoSuchMethod")
    assert code != 0
    assert "Symbol not found" in err


@pytest.mark.parametrize("server", ["gateway", "agent", "rag"])
async def test_v1alpha_reflection_resolves_a_method_to_the_file_of_its_service(system: System, server: str) -> None:
    # grpcurl asks v1 first; older clients speak only v1alpha, served by the same resolver.
    method = METHODS[server][0]
    async with grpc.aio.insecure_channel(system.address(server)) as channel:
        stream = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(file_containing_symbol=method)]), timeout=10
        )
        responses = [response async for response in stream]
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in responses[0].file_descriptor_response.file_descriptor_proto
    ]
    service, name = method.rsplit(".", 1)
    declaring = [f for f in files if any(f"{f.package}.{s.name}" == service for s in f.service)]
    assert declaring, f"no file declaring {service} in the reply"
    assert name in {m.name for s in declaring[0].service for m in s.method}


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


async def test_an_a2a_message_with_json_through_the_gateway_and_its_task_read_back(system: System) -> None:
    # The README's "From other agents" example: A2A over gRPC needs nothing but the contract.
    message = {"messageId": "grpcurl-a2a-1", "role": "ROLE_USER", "parts": [{"text": "How long do refunds take?"}]}
    out = await grpcurl(
        "-d", json.dumps({"message": message, "configuration": {"returnImmediately": True}}),
        system.gateway_address, "lf.a2a.v1.A2AService/SendMessage",
    )  # fmt: skip
    task = json.loads(out)["task"]
    assert task["id"].startswith("run_") and task["status"]["state"] in ("TASK_STATE_SUBMITTED", "TASK_STATE_WORKING")
    fetched = await grpcurl(
        "-d", json.dumps({"id": task["id"]}), system.gateway_address, "lf.a2a.v1.A2AService/GetTask"
    )
    assert json.loads(fetched)["contextId"] == task["contextId"]


@pytest.mark.parametrize("server", ["gateway", "agent", "rag"])
async def test_health_check_on_every_server(system: System, server: str) -> None:
    out = await grpcurl(system.address(server), "grpc.health.v1.Health/Check")
    assert json.loads(out) == {"status": "SERVING"}
