"""MCP tools through the gateway's HTTP side, called with the `mcp` SDK's own client over Streamable HTTP.

The real system (rag, agent, gateway) with auth on every service; the MCP endpoint calls the
gateway's gRPC port, so what is checked here is the whole path a tool call takes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
import httpx2
import jsonschema
import mcp_types as types
import pytest
from google.protobuf import descriptor_pb2
from mcp import Client
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.dispatcher import CallOptions
from mcp.shared.jsonrpc_dispatcher import JSONRPCDispatcher
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agentmesh.agent.v1 import agent_service_pb2_grpc as agent_grpc
from agentmesh.rag.v1 import document_pb2
from agentmesh.rag.v1 import rag_service_pb2 as rag_pb
from agentmesh.rag.v1 import rag_service_pb2_grpc as rag_grpc
from interceptors.rate_limit import Limit, RateLimitPolicy
from runtime.bootstrap import ManagedServer
from runtime.security import AuthSettings
from runtime.settings_errors import InvalidSetting
from services.gateway.config import DEFAULT_DESCRIPTOR_SET, GatewaySettings
from services.gateway.http_entry import mcp_tools
from services.gateway.routing import build_routes, load_descriptor_pool
from services.gateway.server import build as build_gateway
from tests.ports import free_port
from tests.services.agent.runs import listed_once, settled_run
from tests.services.issuer import Issuer
from tests.system import System, start_agent, start_rag

DOCUMENT = document_pb2.Document(
    document_id="refund-policy", text="Refunds are processed within 5 business days.", metadata={"team": "billing"}
)
GET_DOCUMENT = "/agentmesh.rag.v1.RagService/GetDocument"
EVERY_SCOPE = ("runs.read", "runs.write", "documents.read", "documents.write")
# A valid request for each default tool, as a model would send it.
EXAMPLES: dict[str, dict[str, Any]] = {
    "RagService_Search": {"query": "refunds", "top_k": 3, "mode": "MODE_BM25", "metadata_filter": {"team": "billing"}},
    "RagService_GetDocument": {"document_id": "refund-policy"},
    "AgentService_CreateRun": {"question": "How long do refunds take?", "labels": {"channel": "mcp"}},
    "AgentService_GetRun": {"run_id": "0f8fad5b-d9cb-469f-a165-70867728950e"},
}


@dataclass
class McpSystem:
    system: System
    url: str
    gateway_spans: InMemorySpanExporter


@pytest.fixture
async def mcp_system(tmp_path: Path, auth_settings: AuthSettings, issuer: Issuer) -> AsyncIterator[McpSystem]:
    rag = await start_rag(tmp_path, auth=auth_settings)
    agent = await start_agent(tmp_path, f"127.0.0.1:{rag.port}", auth=auth_settings)
    http_port = free_port()
    spans = InMemorySpanExporter()
    settings = GatewaySettings(
        port=0,
        backends={"agent": [f"127.0.0.1:{agent.port}"], "rag": [f"127.0.0.1:{rag.port}"]},
        drain_delay_s=0,
        grace_period_s=1,
        auth=auth_settings,
        http_port=http_port,
        # Only GetDocument is limited: a quota the tests of the other tools never meet.
        rate_limits=RateLimitPolicy(limits={GET_DOCUMENT: Limit(rate_per_second=0.01, burst=2)}),
    )
    gateway = ManagedServer(await build_gateway(settings, span_processors=[SimpleSpanProcessor(spans)]))
    await gateway.start()
    system = System(rag=rag, agent=agent, gateway=gateway)
    try:
        async with grpc.aio.insecure_channel(system.gateway_address) as channel:
            await rag_grpc.RagServiceStub(channel).IngestDocuments(
                rag_pb.IngestDocumentsRequest(documents=[DOCUMENT]),
                metadata=issuer.bearer("librarian", "documents.write"),
                timeout=5,
            )
        yield McpSystem(system, f"http://127.0.0.1:{http_port}/mcp", spans)
    finally:
        for server in (gateway, agent, rag):
            await server.stop()


def _http(token: str | None) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(headers={} if token is None else {"authorization": f"Bearer {token}"}, timeout=20)


@asynccontextmanager
async def _client(url: str, token: str, *, mode: str = "auto") -> AsyncIterator[Client]:
    async with _http(token) as http, Client(streamable_http_client(url, http_client=http), mode=mode) as client:
        yield client


def _structured(result: types.CallToolResult) -> Any:
    assert not result.is_error, result.content
    return result.structured_content


def _text(result: types.CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if isinstance(block, types.TextContent))


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_tools_list_is_the_policy_generated_from_the_protos(
    mcp_system: McpSystem,
    issuer: Issuer,
    mode: str,
) -> None:
    url = mcp_system.url
    async with _client(url, issuer.token("model", *EVERY_SCOPE), mode=mode) as client:
        listed = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert sorted(listed) == sorted(EXAMPLES)
    search, create = listed["RagService_Search"], listed["AgentService_CreateRun"]
    # The description is the method's proto comment; required comes from field_behavior.
    assert search.description == "Search returns the chunks most relevant to a query."
    assert search.input_schema["required"] == ["query", "top_k"]
    assert search.input_schema["properties"]["mode"]["enum"][1] == "MODE_BM25"
    assert search.annotations is not None and search.annotations.read_only_hint is True
    assert create.annotations is not None
    assert (create.annotations.read_only_hint, create.annotations.idempotent_hint) == (False, False)
    assert listed["AgentService_GetRun"].annotations.idempotent_hint is True  # type: ignore[union-attr]
    # OUTPUT_ONLY fields are not inputs; the response's are in the output schema.
    run = create.output_schema["$defs"]["agentmesh.agent.v1.Run"]  # type: ignore[index]
    assert "create_time" in run["properties"]
    for name, example in EXAMPLES.items():
        jsonschema.validate(example, listed[name].input_schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"query": "refunds"}, search.input_schema)


def test_every_tool_schema_is_generated_from_its_request_message() -> None:
    """The schemas follow the protos: every request field appears, by its proto name."""
    settings = GatewaySettings(port=1, http_port=2)
    files = descriptor_pb2.FileDescriptorSet.FromString(DEFAULT_DESCRIPTOR_SET.read_bytes()).file
    messages = {f"{f.package}.{m.name}": m for f in files for m in f.message_type}
    services = {f"{f.package}.{s.name}": s for f in files for s in f.service}
    pool = load_descriptor_pool(settings.descriptor_set)
    tools = mcp_tools(settings, pool, set(build_routes(settings.routes, pool)))
    for tool in tools.values():
        service, method_name = tool.path.lstrip("/").split("/")
        method = next(m for m in services[service].method if m.name == method_name)
        request = messages[method.input_type.lstrip(".")]
        assert set(tool.tool.input_schema["properties"]) == {f.name for f in request.field}


def test_the_tools_are_what_the_policy_names() -> None:
    methods = ["/agentmesh.agent.v1.AgentService/ListRuns", "/agentmesh.rag.v1.RagService/DeleteDocument"]
    settings = GatewaySettings(port=1, http_port=2, mcp_tools=methods)
    pool = load_descriptor_pool(settings.descriptor_set)
    tools = mcp_tools(settings, pool, set(build_routes(settings.routes, pool)))
    assert sorted(tools) == ["AgentService_ListRuns", "RagService_DeleteDocument"]
    delete = tools["RagService_DeleteDocument"].tool.annotations
    # IDEMPOTENT: safe to repeat, yet not read-only; so no idempotency key of its own either.
    assert delete is not None and (delete.read_only_hint, delete.idempotent_hint) == (False, True)
    assert not tools["RagService_DeleteDocument"].needs_key


@pytest.mark.parametrize(
    ("method", "says"),
    [
        ("/agentmesh.rag.v1.RagService/Nope", "no such method in the descriptor set"),
        ("/agentmesh.agent.v1.AgentService/WatchRun", "this method streams"),
        ("RagService.Search", "methods look like /package.Service/Method"),
    ],
)
def test_a_bad_tool_policy_names_the_setting_and_the_method(method: str, says: str) -> None:
    settings = GatewaySettings(port=1, http_port=2, mcp_tools=[method])
    pool = load_descriptor_pool(settings.descriptor_set)
    with pytest.raises(InvalidSetting) as caught:
        mcp_tools(settings, pool, set(build_routes(settings.routes, pool)))
    assert str(caught.value).startswith("AGENTMESH_GATEWAY_MCP_TOOLS: MCP tool ")
    assert says in str(caught.value)


async def test_search_through_mcp_returns_hits(mcp_system: McpSystem, issuer: Issuer) -> None:
    url = mcp_system.url
    async with _client(url, issuer.token("model", "documents.read")) as client:
        result = await client.call_tool("RagService_Search", {"query": "how long do refunds take", "top_k": 3})
    hits = _structured(result)["results"]
    assert hits[0]["citation"]["document_id"] == "refund-policy"
    assert json.loads(_text(result)) == _structured(result)


class _ResendingDispatcher(JSONRPCDispatcher):
    """A client that resends a request under the id it first used, as one does after a lost reply."""

    resend_as: str | None = None

    async def send_raw_request(
        self, method: str, params: Mapping[str, Any] | None, opts: CallOptions | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        if method == "tools/call" and self.resend_as is not None:
            opts = {**(opts or {}), "request_id": self.resend_as}
        return await super().send_raw_request(method, params, opts, **kwargs)


async def test_a_retried_create_run_runs_once(mcp_system: McpSystem, issuer: Issuer) -> None:
    system, url = mcp_system.system, mcp_system.url
    token = issuer.token("model", "runs.write", "runs.read", "documents.read")
    question = {"question": "How long do refunds take?"}
    async with _http(token) as http, streamable_http_client(url, http_client=http) as (read, write):
        dispatcher = _ResendingDispatcher(read, write)
        async with ClientSession(dispatcher=dispatcher) as session:
            await session.discover()
            dispatcher.resend_as = "create-1"
            first = _structured(await session.call_tool("AgentService_CreateRun", question))["run"]
            again = _structured(await session.call_tool("AgentService_CreateRun", question))["run"]
            dispatcher.resend_as = "create-2"  # a new request, not a retry
            other = _structured(await session.call_tool("AgentService_CreateRun", question))["run"]
    assert again["run_id"] == first["run_id"]
    assert other["run_id"] != first["run_id"]
    async with grpc.aio.insecure_channel(system.gateway_address) as channel:
        agent = agent_grpc.AgentServiceStub(channel)
        reader = issuer.bearer("model", "runs.read")
        # Waited for: ListRuns reads the read model, which follows the log a moment after CreateRun
        # returns. A duplicate run the retry made would precede `other` in the log, so it is listed too.
        listed = await listed_once(agent, [first["run_id"], other["run_id"]], metadata=reader)
        run = await settled_run(agent, first["run_id"], metadata=reader)
    assert sorted(r.run_id for r in listed.runs) == sorted([first["run_id"], other["run_id"]])
    assert "5 business days" in run.answer


async def test_a_client_request_id_is_its_own_idempotency_key(mcp_system: McpSystem, issuer: Issuer) -> None:
    url = mcp_system.url
    arguments = {"question": "How long do refunds take?", "request_id": "9b2d4c7e-client-chosen"}
    async with _client(url, issuer.token("model", "runs.write", "documents.read")) as client:
        first = _structured(await client.call_tool("AgentService_CreateRun", arguments))["run"]
        second = _structured(await client.call_tool("AgentService_CreateRun", arguments))["run"]
    assert first["run_id"] == second["run_id"]
    assert first["request_id"] == "9b2d4c7e-client-chosen"


async def test_a_bad_argument_is_a_tool_error_naming_the_field(mcp_system: McpSystem, issuer: Issuer) -> None:
    url = mcp_system.url
    async with _client(url, issuer.token("model", "documents.read")) as client:
        # Refused by the schema before anything is sent.
        wrong_type = await client.call_tool("RagService_Search", {"query": "refunds", "top_k": "three"})
        # Valid JSON, refused by the service itself (AIP-193 BadRequest).
        out_of_range = await client.call_tool("RagService_Search", {"query": "refunds", "top_k": 500})
    assert wrong_type.is_error
    assert "top_k" in _text(wrong_type)
    assert out_of_range.is_error
    assert _text(out_of_range).startswith("INVALID_ARGUMENT")
    assert "field top_k:" in _text(out_of_range)


async def test_tool_calls_meet_the_gateways_rate_limits_per_caller(mcp_system: McpSystem, issuer: Issuer) -> None:
    url = mcp_system.url
    arguments = {"document_id": "refund-policy"}
    async with _client(url, issuer.token("reader", "documents.read")) as client:
        allowed = [await client.call_tool("RagService_GetDocument", arguments) for _ in range(2)]
        limited = await client.call_tool("RagService_GetDocument", arguments)
    async with _client(url, issuer.token("another-reader", "documents.read")) as client:
        other_caller = await client.call_tool("RagService_GetDocument", arguments)
    assert [_structured(result)["document"]["document_id"] for result in allowed] == ["refund-policy"] * 2
    assert limited.is_error
    assert _text(limited).startswith("RESOURCE_EXHAUSTED")
    assert "retry after" in _text(limited)
    assert not other_caller.is_error


async def test_the_clients_trace_goes_on_through_the_gateway(mcp_system: McpSystem, issuer: Issuer) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    traceparent = f"00-{trace_id}-00f067aa0ba902b7-01"
    async with _client(mcp_system.url, issuer.token("model", "documents.read")) as client:
        result = await client.call_tool(
            "RagService_Search",
            {"query": "refunds", "top_k": 1},
            meta=cast(types.RequestParamsMeta, {"traceparent": traceparent}),
        )
    assert not result.is_error
    traced = [s for s in mcp_system.gateway_spans.get_finished_spans() if s.name.endswith("RagService/Search")]
    # The gateway's server span and its forwarded call's, both in the client's trace.
    assert traced
    assert {format(s.context.trace_id, "032x") for s in traced if s.context is not None} == {trace_id}


async def test_a_missing_scope_is_a_tool_error(mcp_system: McpSystem, issuer: Issuer) -> None:
    url = mcp_system.url
    async with _client(url, issuer.token("model", "runs.read")) as client:
        result = await client.call_tool("RagService_Search", {"query": "refunds", "top_k": 3})
    assert result.is_error
    assert _text(result).startswith("PERMISSION_DENIED")


@pytest.mark.parametrize("token", [None, "not-a-jwt"])
async def test_no_valid_token_is_401_with_a_bearer_challenge(mcp_system: McpSystem, token: str | None) -> None:
    url = mcp_system.url
    request = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    async with _http(token) as http:
        response = await http.post(url, json=request, headers={"accept": "application/json, text/event-stream"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer ")


async def test_a_plain_json_rpc_post_lists_the_tools(mcp_system: McpSystem, issuer: Issuer) -> None:
    """What `make run`'s banner suggests with curl: one POST, no session, a JSON answer."""
    url = mcp_system.url
    request = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    async with _http(issuer.token("model", "documents.read")) as http:
        response = await http.post(url, json=request, headers={"accept": "application/json, text/event-stream"})
    assert response.status_code == 200, response.text
    assert sorted(tool["name"] for tool in response.json()["result"]["tools"]) == sorted(EXAMPLES)


async def test_the_protected_resource_metadata_names_the_issuer_and_the_tools_scopes(
    mcp_system: McpSystem, auth_settings: AuthSettings
) -> None:
    """MCP authorization: the 401's challenge points at RFC 9728 metadata, which says whose tokens to bring."""
    url = mcp_system.url
    async with _http(None) as http:
        refused = await http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        challenge = refused.headers["www-authenticate"]
        metadata_url = challenge.split('resource_metadata="')[1].split('"')[0]
        metadata = (await http.get(metadata_url)).json()
    assert metadata_url == url.replace("/mcp", "/.well-known/oauth-protected-resource/mcp")
    assert metadata["resource"] == url
    # (The SDK's model spells a bare-host URL with a trailing slash.)
    assert [server.rstrip("/") for server in metadata["authorization_servers"]] == [auth_settings.issuer]
    assert metadata["scopes_supported"] == ["documents.read", "runs.read", "runs.write"]
