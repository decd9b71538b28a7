"""The console receives traces over standard OTLP/gRPC: a real SDK exporter in, bad requests refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest
from google.rpc import error_details_pb2
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, StatusCode

from console.otlp_receiver import EXPORT, MAX_VALUE_CHARS, TraceReceiver
from console.trace_store import TraceStore
from rpcstatus.errors import status_details


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, TraceStore]]:
    store = TraceStore(max_traces=100, max_spans_per_trace=100)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((TraceReceiver(store, drop_span_prefixes=["/grpc.health.v1.Health/"]),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", store
    finally:
        await server.stop(None)


async def test_spans_from_the_opentelemetry_sdk_exporter_are_stored_with_their_tree(
    receiver: tuple[str, TraceStore],
) -> None:
    address, store = receiver
    long_value = "x" * (MAX_VALUE_CHARS * 3)

    def export_a_trace() -> trace.Span:
        # The SDK exports synchronously from this thread; the receiver answers on the test's loop.
        exporter = OTLPSpanExporter(endpoint=f"http://{address}")
        provider = TracerProvider(
            resource=Resource.create({"service.name": "agentmesh-gateway"}), shutdown_on_exit=False
        )
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = provider.get_tracer("test")
        with tracer.start_as_current_span("/agentmesh.agent.v1.AgentService/CreateRun", kind=SpanKind.SERVER) as root:
            root.set_attribute("rpc.grpc.status_code", 0)
            with tracer.start_as_current_span("/agentmesh.rag.v1.RagService/Search", kind=SpanKind.CLIENT) as child:
                child.set_attribute("big", long_value)
                child.set_status(StatusCode.ERROR, "retrieval failed")
            with tracer.start_as_current_span("/grpc.health.v1.Health/Check", kind=SpanKind.SERVER):
                pass
        provider.shutdown()
        return root

    root = await asyncio.to_thread(export_a_trace)
    trace_id = format(root.get_span_context().trace_id, "032x")
    stored = store.get(trace_id)
    assert stored is not None
    by_name = {s.name: s for s in stored.spans}
    assert set(by_name) == {"/agentmesh.agent.v1.AgentService/CreateRun", "/agentmesh.rag.v1.RagService/Search"}
    search = by_name["/agentmesh.rag.v1.RagService/Search"]
    assert search.parent_span_id == format(root.get_span_context().span_id, "016x")
    assert search.service == "agentmesh-gateway"
    assert search.kind == "CLIENT"
    assert search.status_message == "retrieval failed"
    assert len(search.attributes["big"]) == MAX_VALUE_CHARS  # bounded, whatever a service sends
    summary = stored.summary()
    assert summary["method"] == "/agentmesh.agent.v1.AgentService/CreateRun"
    assert summary["status"] == "OK" and summary["error"] is True


async def test_bytes_that_are_not_an_export_request_are_invalid_argument_and_the_receiver_lives_on(
    receiver: tuple[str, TraceStore],
) -> None:
    address, store = receiver
    async with grpc.aio.insecure_channel(address) as channel:
        export = channel.unary_unary(EXPORT)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await export(b"\xff\xff\xff\xff not protobuf", timeout=5)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "ExportTraceServiceRequest" in (refused.value.details() or "")
        stub = trace_service_pb2_grpc.TraceServiceStub(channel)
        await stub.Export(trace_service_pb2.ExportTraceServiceRequest(), timeout=5)  # still serving
    assert len(store) == 0


async def test_spans_with_malformed_ids_are_invalid_argument_naming_the_field_and_nothing_is_stored(
    receiver: tuple[str, TraceStore],
) -> None:
    address, store = receiver
    good = trace_pb2.Span(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="ok")
    bad = trace_pb2.Span(trace_id=b"\x01" * 5, span_id=b"\x03" * 8, name="short trace id")
    request = trace_service_pb2.ExportTraceServiceRequest(
        resource_spans=[trace_pb2.ResourceSpans(scope_spans=[trace_pb2.ScopeSpans(spans=[good, bad])])]
    )
    async with grpc.aio.insecure_channel(address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await trace_service_pb2_grpc.TraceServiceStub(channel).Export(request, timeout=5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad_request = next(d for d in status_details(refused.value) if isinstance(d, error_details_pb2.BadRequest))
    assert [v.field for v in bad_request.field_violations] == ["resource_spans[0].scope_spans[0].spans[1].trace_id"]
    assert len(store) == 0
