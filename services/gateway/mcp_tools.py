"""MCP tools generated from the descriptor set: one tool per gRPC method the policy names.

Nothing here knows any method: a tool's name, title and description come from the method and
its proto comments, its ``inputSchema`` from the request message (``tool_schema``), its
``outputSchema`` from the response message, and its hints from the method's
``idempotency_level`` (NO_SIDE_EFFECTS: read-only; IDEMPOTENT or NO_SIDE_EFFECTS: idempotent).
Which methods become tools is the ``mcp_tools`` setting, checked here against the descriptors:
an unknown, unrouted or streaming method stops the gateway at start-up with its name.

A call turns JSON arguments into the request message (json_format, after the schema check, so
a bad argument is named before anything is sent) and a response or a gRPC error into a
``CallToolResult``: AIP-193 details (BadRequest field violations, ErrorInfo, RetryInfo, ...)
become text naming the field and what to change, with ``isError`` set so the model can correct
itself (the MCP spec's rule for tool errors).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
import mcp_types as types
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from rpcstatus.errors import status_details
from services.gateway.tool_schema import SchemaBuilder, source_comments

_MethodOptions = descriptor_pb2.MethodOptions
# AIP-155: a string field by this name carries the client's idempotency key.
REQUEST_ID_FIELD = "request_id"


@dataclass(frozen=True, slots=True)
class GrpcTool:
    """One tool and the method behind it."""

    tool: types.Tool
    path: str  # "/package.Service/Method", the gRPC method the call goes to
    request_type: type[Message]
    response_type: type[Message]
    validator: Draft202012Validator
    # A method that is neither NO_SIDE_EFFECTS nor IDEMPOTENT: each call carries an idempotency key.
    needs_key: bool
    # Its request's AIP-155 field, when it has one (the key goes there too).
    key_field: str | None

    @property
    def name(self) -> str:
        return self.tool.name

    def request(self, arguments: Mapping[str, Any]) -> Message:
        """The request message, or ``ValueError`` with a message naming the bad argument."""
        error = best_match(self.validator.iter_errors(arguments))
        if error is not None:
            where = ".".join(str(part) for part in error.absolute_path) or "(arguments)"
            raise ValueError(f"argument {where}: {error.message}")
        try:
            return json_format.ParseDict(dict(arguments), self.request_type())
        except json_format.ParseError as parse_error:
            raise ValueError(f"arguments: {parse_error}") from None

    def result(self, response: Message) -> types.CallToolResult:
        # Proto field names, as in the schemas; fields at their defaults are left out, as proto3 JSON does.
        structured = json_format.MessageToDict(response, preserving_proto_field_name=True)
        return types.CallToolResult(
            content=[types.TextContent(text=json.dumps(structured, ensure_ascii=False))],
            structured_content=structured,
        )


def tool_name(method: descriptor.MethodDescriptor) -> str:
    """``RagService_Search``: service and method, in the characters every model API accepts in a tool name."""
    return f"{method.containing_service.name}_{method.name}"


def build_tools(
    methods: Sequence[str],
    *,
    pool: descriptor_pool.DescriptorPool,
    files: Sequence[descriptor_pb2.FileDescriptorProto],
    routed: Collection[str],
) -> dict[str, GrpcTool]:
    """The tools for ``methods`` (``/package.Service/Method``), by tool name.

    ``routed`` is the set of methods the gateway routes: a tool the gateway could not forward
    would only ever fail.
    """
    comments = source_comments(files)
    inputs = SchemaBuilder(comments, for_input=True)
    outputs = SchemaBuilder(comments, for_input=False)
    tools: dict[str, GrpcTool] = {}
    for path in methods:
        method = _method(pool, path)
        if path not in routed:
            raise ValueError(f"MCP tool {path}: the gateway has no route for {method.containing_service.full_name}")
        if method.client_streaming or method.server_streaming:
            raise ValueError(f"MCP tool {path}: a tool is one request and one result; this method streams")
        level = method.GetOptions().idempotency_level
        read_only = level == _MethodOptions.NO_SIDE_EFFECTS
        idempotent = read_only or level == _MethodOptions.IDEMPOTENT
        key_field = method.input_type.fields_by_name.get(REQUEST_ID_FIELD)
        input_schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **inputs.schema(method.input_type)}
        description = comments.get(method.full_name, method.full_name)
        if not idempotent:
            description += (
                " Not idempotent: a retried tools/call (the same JSON-RPC id and arguments) returns the first"
                " call's outcome instead of running again."
            )
        tool = types.Tool(
            name=tool_name(method),
            title=f"{method.containing_service.name}.{method.name}",
            description=description,
            input_schema=input_schema,
            output_schema={
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                **outputs.schema(method.output_type),
            },
            annotations=types.ToolAnnotations(read_only_hint=read_only, idempotent_hint=idempotent),
        )
        if tool.name in tools:
            raise ValueError(f"MCP tool {path}: two methods make the tool name {tool.name}")
        tools[tool.name] = GrpcTool(
            tool=tool,
            path=path,
            request_type=message_factory.GetMessageClass(method.input_type),
            response_type=message_factory.GetMessageClass(method.output_type),
            validator=Draft202012Validator(input_schema),
            needs_key=not idempotent,
            key_field=REQUEST_ID_FIELD
            if key_field is not None and key_field.type == descriptor.FieldDescriptor.TYPE_STRING
            else None,
        )
    return tools


def _method(pool: descriptor_pool.DescriptorPool, path: str) -> descriptor.MethodDescriptor:
    service, _, name = path.lstrip("/").partition("/")
    if not path.startswith("/") or not service or not name:
        raise ValueError(f"MCP tool {path!r}: methods look like /package.Service/Method")
    try:
        return pool.FindMethodByName(f"{service}.{name}")
    except KeyError:
        raise ValueError(f"MCP tool {path}: no such method in the descriptor set") from None


def error_result(error: grpc.aio.AioRpcError) -> types.CallToolResult:
    """A failed call as a tool error whose text says what was wrong and what to do (AIP-193 details)."""
    code = error.code()
    lines = [f"{code.name}: {error.details() or 'no message'}"]
    for detail in status_details(error):
        if isinstance(detail, error_details_pb2.BadRequest):
            lines += [f"field {v.field}: {v.description}" for v in detail.field_violations]
        elif isinstance(detail, error_details_pb2.PreconditionFailure):
            lines += [f"precondition {v.type} {v.subject}: {v.description}" for v in detail.violations]
        elif isinstance(detail, error_details_pb2.QuotaFailure):
            lines += [f"quota {v.subject}: {v.description}" for v in detail.violations]
        elif isinstance(detail, error_details_pb2.RetryInfo):
            delay = detail.retry_delay.seconds + detail.retry_delay.nanos / 1e9
            lines.append(f"retry after {delay:g}s")
        elif isinstance(detail, error_details_pb2.ErrorInfo):
            lines.append(f"reason {detail.reason}")
        elif isinstance(detail, error_details_pb2.ResourceInfo):
            lines.append(f"resource {detail.resource_type} {detail.resource_name}: {detail.description}".rstrip(": "))
    return tool_error("\n".join(lines))


def tool_error(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=text)], is_error=True)
