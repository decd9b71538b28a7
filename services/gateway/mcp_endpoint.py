"""The MCP server of the gateway's HTTP side: generated tools, each call made through the gateway itself.

A ``tools/call`` becomes a gRPC call to the gateway's own port over loopback, with the MCP
request's bearer token as its ``authorization`` metadata. It therefore meets everything a gRPC
client meets, in the same order and with the same code: token verification and scopes, rate
limits per caller, the default deadline, routing, the canary split, retries and breakers. Nothing
here re-implements a policy.

Served statelessly (no ``Mcp-Session-Id``, JSON responses): any process and any replica answers any
request, as the gRPC side does, and the 2026-07-28 protocol is per-request anyway.

Retries: a method with side effects (neither NO_SIDE_EFFECTS nor IDEMPOTENT) gets an idempotency
key derived from the MCP request, a hash of its JSON-RPC id, tool name and arguments, sent as the
``idempotency-key`` header and in the request's AIP-155 ``request_id`` when it has one and the
client left it empty. The backend's idempotency interceptor (per caller, per method) then runs a
resent ``tools/call`` once and replays its outcome. A client that wants a new call with the same
arguments sends a new id, as JSON-RPC asks; ``request_id`` set by the client is its own key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

import grpc
import grpc.aio
import mcp_types as types
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError
from starlette.requests import Request

from interceptors.idempotency import HEADER as IDEMPOTENCY_HEADER
from services.gateway.mcp_tools import GrpcTool, error_result, tool_error

SERVER_NAME = "agentmesh"
TRACE_KEYS = ("traceparent", "tracestate")


class McpEndpoint:
    """The tools, the loopback channel they are called through, and the Streamable HTTP app serving them."""

    def __init__(self, tools: Mapping[str, GrpcTool], *, gateway: grpc.aio.Channel, timeout_s: float) -> None:
        self._tools = dict(tools)
        self._listing = types.ListToolsResult(tools=[t.tool for t in self._tools.values()])
        self._timeout_s = timeout_s
        self._calls = {
            name: gateway.unary_unary(
                tool.path,
                request_serializer=_serialize,
                response_deserializer=tool.response_type.FromString,
            )
            for name, tool in self._tools.items()
        }
        server: Server[Any] = Server(
            SERVER_NAME,
            instructions="Tools generated from agentmesh's gRPC contracts; each calls the mesh as the token's caller.",
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
        )
        self._sessions = StreamableHTTPSessionManager(app=server, stateless=True, json_response=True)
        self.app = StreamableHTTPASGIApp(self._sessions)

    def running(self) -> AbstractAsyncContextManager[None]:
        """The session manager's task group, entered for as long as the endpoint serves."""
        return self._sessions.run()

    async def _list_tools(
        self, _ctx: ServerRequestContext[Any], _params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return self._listing

    async def _call_tool(
        self, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        tool = self._tools.get(params.name)
        if tool is None:
            # An unknown tool is a protocol error, not a tool error (MCP spec, tools/call).
            raise MCPError(code=types.INVALID_PARAMS, message=f"unknown tool {params.name!r}")
        arguments = params.arguments or {}
        try:
            request = tool.request(arguments)
        except ValueError as error:
            return tool_error(f"INVALID_ARGUMENT: {error}")
        metadata: list[tuple[str, str]] = []
        http = ctx.request if isinstance(ctx.request, Request) else None
        authorization = None if http is None else http.headers.get("authorization")
        if authorization is not None:
            metadata.append(("authorization", authorization))
        # The client's trace goes on through the mesh: W3C context from the request's _meta (where
        # MCP carries it, SEP-414), else from its HTTP headers.
        for key in TRACE_KEYS:
            value = (ctx.meta or {}).get(key) or (None if http is None else http.headers.get(key))
            if isinstance(value, str):
                metadata.append((key, value))
        # A client's own AIP-155 key stands alone (the backend then names that field in its errors).
        if tool.needs_key and not (tool.key_field and getattr(request, tool.key_field)):
            key = _request_key(ctx.request_id, params.name, arguments)
            if tool.key_field:
                setattr(request, tool.key_field, key)
            metadata.append((IDEMPOTENCY_HEADER, key))
        try:
            response = await self._calls[tool.name](request, metadata=metadata, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as error:
            return error_result(error)
        return tool.result(response)


def _request_key(request_id: types.RequestId | None, tool: str, arguments: Mapping[str, Any]) -> str:
    """The idempotency key of one MCP request: the same resent request, the same key."""
    body = json.dumps([request_id, tool, arguments], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "mcp-" + hashlib.sha256(body.encode()).hexdigest()[:40]


def _serialize(message: Any) -> bytes:
    return bytes(message.SerializeToString())
