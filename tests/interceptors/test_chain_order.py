"""interceptors.chain orders the parts so that each sees what it must: a crash or a refusal anywhere
inside is traced, counted and logged with its real code and the call's trace id."""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from interceptors._typing import Context
from interceptors.access_log import AccessLogInterceptor
from interceptors.chain import server_chain
from interceptors.deadline import DeadlineInterceptor
from interceptors.decode import DecodeInterceptor
from interceptors.drain import DrainInterceptor
from interceptors.idempotency import IdempotencyInterceptor, IdempotentMethod, MemoryStore
from interceptors.layer import Check, Concern, MethodInfo, ServerChain
from interceptors.metrics import Metrics, MetricsInterceptor
from interceptors.recovery import RecoveryInterceptor
from interceptors.tracing import TracingInterceptor, add_trace_context, setup_tracing
from rpcstatus.details import error_status
from tests.interceptors.probe import DO, Probe, eventually, serve, sv


class Refuse(Concern):
    """Stands in for auth: refuses every call."""

    def compile(self, info: MethodInfo) -> Check:
        refusal = error_status(grpc.StatusCode.UNAUTHENTICATED, "no credentials")

        def refuse(context: Context) -> grpc.Status:
            return refusal

        return Check(refuse)


def _chain(exporter: InMemorySpanExporter, registry: CollectorRegistry, **slots: Any) -> ServerChain:
    return server_chain(
        tracing=setup_tracing(service_name="probe", span_processors=[SimpleSpanProcessor(exporter)]),
        metrics=Metrics(registry=registry),
        access_log=AccessLogInterceptor(),
        default_deadline_s=10,
        **slots,
    )


def _handled(registry: CollectorRegistry, method: str, code: str) -> float:
    labels = {"grpc_service": "agentmesh.test.Probe", "grpc_method": method, "grpc_code": code}
    kind = "unary" if method == "Do" else "server_stream"
    return registry.get_sample_value("grpc_server_handled_total", {**labels, "grpc_type": kind}) or 0.0


def test_the_parts_come_in_the_documented_order() -> None:
    auth, rate_limit = Refuse(), Refuse()
    idempotency = IdempotencyInterceptor(store=MemoryStore(), methods={DO: IdempotentMethod()})
    chain = _chain(
        InMemorySpanExporter(), CollectorRegistry(), auth=auth, rate_limit=rate_limit, idempotency=idempotency
    )
    kinds = [type(part) for part in chain.concerns]
    assert kinds[:6] == [
        TracingInterceptor,
        MetricsInterceptor,
        AccessLogInterceptor,
        RecoveryInterceptor,
        DeadlineInterceptor,
        DrainInterceptor,
    ]
    assert chain.concerns[6:8] == (auth, rate_limit)
    assert type(chain.concerns[8]) is DecodeInterceptor
    assert chain.concerns[9] is idempotency


async def test_a_crash_is_traced_counted_and_logged_as_internal_with_the_trace_id(probe: Probe) -> None:
    exporter, registry = InMemorySpanExporter(), CollectorRegistry()
    async with serve(probe, [_chain(exporter, registry)]) as client:
        with capture_logs(processors=[add_trace_context]) as logs:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client.do(sv("crash"))
            await eventually(lambda: len(logs) == 2 and len(exporter.get_finished_spans()) == 1)
    [span] = exporter.get_finished_spans()
    trace_id = format(span.context.trace_id, "032x")
    assert caught.value.code() is grpc.StatusCode.INTERNAL
    assert caught.value.details() == f"internal error (trace id {trace_id})"
    assert _handled(registry, "Do", "INTERNAL") == 1
    crash, access = logs
    assert (crash["event"], crash["trace_id"]) == ("unhandled exception", trace_id)
    assert (access["code"], access["trace_id"]) == ("INTERNAL", trace_id)


@pytest.mark.parametrize("streaming", [False, True])
async def test_a_refusal_inside_the_chain_is_traced_counted_and_logged(probe: Probe, streaming: bool) -> None:
    exporter, registry = InMemorySpanExporter(), CollectorRegistry()
    async with serve(probe, [_chain(exporter, registry, auth=Refuse())]) as client:
        with capture_logs(processors=[add_trace_context]) as logs:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                if streaming:
                    await client.stream(sv("2")).read()
                else:
                    await client.do(sv("ok:a"))
            await eventually(lambda: len(logs) == 1 and len(exporter.get_finished_spans()) == 1)
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    [span] = exporter.get_finished_spans()
    assert _handled(registry, "Stream" if streaming else "Do", "UNAUTHENTICATED") == 1
    [access] = logs
    assert (access["code"], access["trace_id"]) == ("UNAUTHENTICATED", format(span.context.trace_id, "032x"))
    assert sum(probe.runs.values()) == 0


async def test_streams_go_through_the_whole_chain(probe: Probe) -> None:
    exporter, registry = InMemorySpanExporter(), CollectorRegistry()
    async with serve(probe, [_chain(exporter, registry)]) as client:
        with capture_logs(processors=[add_trace_context]) as logs:
            assert [m.value async for m in client.stream(sv("3"))] == ["0", "1", "2"]
    [span] = exporter.get_finished_spans()
    assert span.name == "/agentmesh.test.Probe/Stream"
    assert _handled(registry, "Stream", "OK") == 1
    [access] = logs
    assert access["trace_id"] == format(span.context.trace_id, "032x")
