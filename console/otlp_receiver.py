"""An OTLP/gRPC trace receiver: ``opentelemetry.proto.collector.trace.v1.TraceService/Export``.

Any OpenTelemetry SDK or collector exports to it unchanged (``OTLP_ENDPOINT`` set to the
console's address), and the same setting can point at Jaeger or Tempo instead. Requests are
decoded here rather than by grpc, so bytes that are not an ``ExportTraceServiceRequest`` get
INVALID_ARGUMENT naming what is wrong (as the OTLP specification asks), never a crash; spans
with malformed ids are rejected the same way, and nothing of such a request is stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
import grpc.aio
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from console.trace_store import SPAN_KINDS, Span, TraceStore
from rpcstatus.errors import ApiError, invalid_argument

SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
EXPORT = f"/{SERVICE}/Export"
# Attribute values longer than this are cut (a huge SQL text or prompt must not fill the ring).
MAX_VALUE_CHARS = 2048
MAX_ATTRIBUTES = 64


def _value(value: common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value[:MAX_VALUE_CHARS]
    if kind == "bool_value":
        return value.bool_value
    if kind == "int_value":
        return value.int_value
    if kind == "double_value":
        return value.double_value
    if kind == "bytes_value":
        return value.bytes_value.hex()[:MAX_VALUE_CHARS]
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values[:MAX_ATTRIBUTES]]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.kvlist_value.values[:MAX_ATTRIBUTES]}
    return None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in list(pairs)[:MAX_ATTRIBUTES]}


def decode_spans(request: trace_service_pb2.ExportTraceServiceRequest) -> list[Span]:
    """The request's spans as the console keeps them; ApiError(INVALID_ARGUMENT) on malformed ids."""
    spans: list[Span] = []
    violations: list[tuple[str, str]] = []
    for r, resource_spans in enumerate(request.resource_spans):
        resource = _attributes(resource_spans.resource.attributes)
        service = str(resource.get("service.name") or "unknown_service")
        for s, scope_spans in enumerate(resource_spans.scope_spans):
            for i, span in enumerate(scope_spans.spans):
                path = f"resource_spans[{r}].scope_spans[{s}].spans[{i}]"
                violations += _check_ids(path, span)
                if violations:
                    continue
                spans.append(
                    Span(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        service=service,
                        name=span.name[:MAX_VALUE_CHARS],
                        kind=SPAN_KINDS[span.kind] if 0 <= span.kind < len(SPAN_KINDS) else str(span.kind),
                        start_ns=span.start_time_unix_nano,
                        end_ns=max(span.end_time_unix_nano, span.start_time_unix_nano),
                        status_code=span.status.code,
                        status_message=span.status.message[:MAX_VALUE_CHARS],
                        attributes=_attributes(span.attributes),
                    )
                )
    if violations:
        raise invalid_argument(violations[:10])
    return spans


def _check_ids(path: str, span: trace_pb2.Span) -> list[tuple[str, str]]:
    problems = []
    if len(span.trace_id) != 16 or not any(span.trace_id):
        problems.append((f"{path}.trace_id", f"must be 16 bytes, not all zero (got {len(span.trace_id)} bytes)"))
    if len(span.span_id) != 8 or not any(span.span_id):
        problems.append((f"{path}.span_id", f"must be 8 bytes, not all zero (got {len(span.span_id)} bytes)"))
    if span.parent_span_id and len(span.parent_span_id) != 8:
        problems.append((f"{path}.parent_span_id", f"must be empty or 8 bytes (got {len(span.parent_span_id)})"))
    return problems


class TraceReceiver(grpc.GenericRpcHandler):  # type: ignore[type-arg]  # generic only in the stubs
    """Serves Export on a grpc.aio server; raw bytes in, so decoding errors are ours to report."""

    def __init__(self, store: TraceStore, *, drop_span_prefixes: Sequence[str] = ()) -> None:
        self._store = store
        self._drop = tuple(drop_span_prefixes)
        self._handler = grpc.unary_unary_rpc_method_handler(
            self._export, request_deserializer=None, response_serializer=None
        )

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        return self._handler if handler_call_details.method == EXPORT else None

    async def _export(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        try:
            try:
                message = trace_service_pb2.ExportTraceServiceRequest.FromString(request)
            except DecodeError as error:
                raise ApiError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"the request is not an OTLP ExportTraceServiceRequest ({error}); "
                    "send opentelemetry.proto.collector.trace.v1 protobuf",
                ) from None
            spans = decode_spans(message)
        except ApiError as error:
            await error.abort(context)
        if self._drop:
            spans = [s for s in spans if not s.name.startswith(self._drop)]
        self._store.add(spans)
        return trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
