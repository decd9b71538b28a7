"""The server layer: which concerns apply to a method is decided once, when it is compiled, and
the drain gate and request decoding are concerns like the others, so their refusals are traced,
counted and logged."""

from __future__ import annotations

from contextvars import copy_context
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf.wrappers_pb2 import StringValue
from google.rpc import error_details_pb2
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from interceptors._typing import Context
from interceptors.access_log import AccessLogInterceptor
from interceptors.chain import server_chain
from interceptors.drain import DrainInterceptor
from interceptors.idempotency import IdempotencyInterceptor, IdempotentMethod, MemoryStore
from interceptors.layer import Check, Concern, MethodInfo, Observe, ServerChain, steps_for
from interceptors.metrics import Metrics
from interceptors.outcome import Outcome, request_metadata
from interceptors.selector import LONG_LIVED, PROBES, except_, matches, methods, validate_pattern
from interceptors.tracing import add_trace_context, setup_tracing
from rpcstatus.details import find_detail
from tests.interceptors.probe import DO, STREAM, Probe, eventually, serve, sv

HEALTH_CHECK = "/grpc.health.v1.Health/Check"


def _info(name: str, *, streaming: bool = False) -> MethodInfo:
    service, _, method = name.lstrip("/").partition("/")
    return MethodInfo(name, service, method, False, streaming)


def _observed_chain(drain: DrainInterceptor) -> tuple[ServerChain, InMemorySpanExporter, CollectorRegistry]:
    exporter, registry = InMemorySpanExporter(), CollectorRegistry()
    chain = server_chain(
        tracing=setup_tracing(service_name="probe", span_processors=[SimpleSpanProcessor(exporter)]),
        metrics=Metrics(registry=registry),
        access_log=AccessLogInterceptor(),
        default_deadline_s=10,
        drain=drain,
    )
    return chain, exporter, registry


def _handled(registry: CollectorRegistry, code: str) -> float:
    labels = {"grpc_type": "unary", "grpc_service": "agentmesh.test.Probe", "grpc_method": "Do", "grpc_code": code}
    return registry.get_sample_value("grpc_server_handled_total", labels) or 0.0


async def test_a_drain_refusal_is_traced_counted_and_logged(probe: Probe) -> None:
    drain = DrainInterceptor()
    chain, exporter, registry = _observed_chain(drain)
    async with serve(probe, [chain]) as client:
        drain.draining = True
        with capture_logs(processors=[add_trace_context]) as logs:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client.do(sv("ok:a"))
            await eventually(lambda: len(logs) == 1 and len(exporter.get_finished_spans()) == 1)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    info = find_detail(caught.value, error_details_pb2.ErrorInfo)
    assert info is not None and info.reason == "DRAINING"
    assert _handled(registry, "UNAVAILABLE") == 1
    [span] = exporter.get_finished_spans()
    [access] = logs
    assert (access["code"], access["trace_id"]) == ("UNAVAILABLE", format(span.context.trace_id, "032x"))
    assert sum(probe.runs.values()) == 0


async def test_an_undecodable_request_is_refused_traced_counted_and_logged(probe: Probe) -> None:
    chain, exporter, registry = _observed_chain(DrainInterceptor())
    async with serve(probe, [chain]) as client:
        raw = client.channel.unary_unary(DO)  # bytes in, bytes out: nothing encodes the request
        with capture_logs(processors=[add_trace_context]) as logs:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await raw(b"\xff\xff\xff", timeout=5)
            await eventually(lambda: len(logs) == 1 and len(exporter.get_finished_spans()) == 1)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "is not a valid protobuf message for /agentmesh.test.Probe/Do" in (caught.value.details() or "")
    assert _handled(registry, "INVALID_ARGUMENT") == 1
    [span] = exporter.get_finished_spans()
    [access] = logs
    assert (access["code"], access["trace_id"]) == ("INVALID_ARGUMENT", format(span.context.trace_id, "032x"))
    assert sum(probe.runs.values()) == 0


def test_probes_pass_the_drain_gate_and_long_lived_streams_get_no_default_deadline() -> None:
    chain = server_chain(tracing=None, metrics=None, access_log=None, default_deadline_s=5)
    kinds = {type(step) for step in steps_for(chain.concerns, _info(HEALTH_CHECK))}
    assert Check not in kinds  # no drain gate on health: checkers must see NOT_SERVING
    watch = steps_for(chain.concerns, _info("/grpc.health.v1.Health/Watch", streaming=True))
    check = steps_for(chain.concerns, _info(HEALTH_CHECK))
    assert len(watch) == len(check) - 1  # the deadline step is the one Watch lacks


class _Counting(Concern):
    """Counts how often it is compiled and run, and observes every call it applies to."""

    def __init__(self, select: Any = None) -> None:
        if select is not None:
            self.select = select
        self.compiled: list[str] = []
        self.seen: list[str] = []

    def compile(self, info: MethodInfo) -> Observe:
        self.compiled.append(info.name)

        def done(context: Context, outcome: Outcome, started: float) -> None:
            self.seen.append(info.name)

        return Observe(done)


async def test_a_method_is_compiled_once_however_many_calls_it_serves(probe: Probe) -> None:
    counting = _Counting()
    async with serve(probe, [ServerChain([counting])]) as client:
        for index in range(5):
            await client.do(sv(f"ok:{index}"))
        await eventually(lambda: len(counting.seen) == 5)
    assert counting.compiled == [DO]


async def test_a_concern_is_asked_only_about_the_methods_its_matcher_selects(probe: Probe) -> None:
    only_do = _Counting(select=methods(DO))
    async with serve(probe, [ServerChain([only_do])]) as client:
        assert [m.value async for m in client.stream(sv("2"))] == ["0", "1"]
        await client.do(sv("ok:a"))
        await eventually(lambda: len(only_do.seen) == 1)
    assert only_do.compiled == [DO]
    assert only_do.seen == [DO]


def test_one_method_pattern_grammar() -> None:
    for good in ("*", "/pkg.Service/*", "/pkg.Service/Method"):
        assert validate_pattern(good) == good
    for bad in ("pkg.Service/Method", "/pkg.*/Method", "/pkg.Service/Get*", "/pkg.Service", "/pkg.Service/"):
        with pytest.raises(ValueError, match="method pattern"):
            validate_pattern(bad)
    assert matches("*", DO) and matches("/agentmesh.test.Probe/*", DO) and matches(DO, DO)
    assert not matches("/agentmesh.test.Prob/*", DO) and not matches(STREAM, DO)
    assert methods("/agentmesh.test.Probe/*")(STREAM)
    assert except_(methods(DO))(STREAM) and not except_(methods(DO))(DO)
    assert PROBES(HEALTH_CHECK) and PROBES("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
    assert LONG_LIVED("/grpc.health.v1.Health/Watch") and not LONG_LIVED(HEALTH_CHECK)
    assert not PROBES(DO)


def test_idempotency_steps_only_into_the_methods_that_take_keys() -> None:
    idempotency = IdempotencyInterceptor(store=MemoryStore(), methods={DO: IdempotentMethod()})
    assert idempotency.compile(_info(DO)) is not None
    assert idempotency.compile(_info("/agentmesh.test.Probe/Other")) is None


async def test_steps_of_a_chain_run_in_its_order(probe: Probe) -> None:
    order: list[str] = []

    class Named(Concern):
        def __init__(self, name: str) -> None:
            self.name = name

        def compile(self, info: MethodInfo) -> Check:
            def note(context: Context) -> None:
                order.append(self.name)

            return Check(note)

    async with serve(probe, [ServerChain([Named("outer"), Named("middle"), Named("inner")])]) as client:
        assert (await client.do(StringValue(value="ok:x"))).value == "x#1"
    assert order == ["outer", "middle", "inner"]


class _RecordingServer:
    """What the registrar passes on to grpc.aio: the generic handlers, and any registered methods."""

    def __init__(self) -> None:
        self.generic: list[Any] = []
        self.registered: list[str] = []

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        self.registered.append(service)


class _Details:
    def __init__(self, method: str, metadata: tuple[tuple[str, str], ...]) -> None:
        self.method = method
        self.invocation_metadata = metadata


def test_registered_methods_become_one_compiled_table_that_grpc_asks_first() -> None:
    # grpc.aio waits on one pending request per registered method for every call it accepts,
    # so the registrar hands it none: every method sits in one dict, asked before any other.
    server = _RecordingServer()
    seen: list[str] = []

    class Marks(Concern):
        def compile(self, info: MethodInfo) -> Observe:
            seen.append(info.name)
            return Observe(lambda context, outcome, started: None)

    registrar: Any = ServerChain([Marks()]).registrar(server)  # type: ignore[arg-type]
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    fallback = grpc.method_handlers_generic_handler("pkg.Other", {"Call": handler})
    # As generated add_*_to_server code does: the generic handler, then the registered methods.
    registrar.add_generic_rpc_handlers((fallback,))
    registrar.add_registered_method_handlers("pkg.Service", {"Do": handler})

    assert server.registered == []
    table, compiled_fallback = server.generic
    assert seen == ["/pkg.Service/Do"]  # compiled at registration, not at the first call
    do = table.service(_Details("/pkg.Service/Do", ()))
    assert do is not None and do is not handler and do.unary_unary is not handler.unary_unary
    assert table.service(_Details("/pkg.Other/Call", ())) is None  # left to the handlers after it
    assert compiled_fallback.service(_Details("/pkg.Other/Call", ())) is not None
    assert seen == ["/pkg.Service/Do", "/pkg.Other/Call"]


def test_the_metadata_grpc_built_for_the_lookup_is_what_the_chain_reads() -> None:
    server = _RecordingServer()
    registrar: Any = ServerChain([DrainInterceptor()]).registrar(server)  # type: ignore[arg-type]
    registrar.add_registered_method_handlers(
        "pkg.Service", {"Do": grpc.unary_unary_rpc_method_handler(lambda request, context: request)}
    )
    [table] = server.generic
    metadata = (("authorization", "Bearer x"),)

    class NoMetadataRead:
        def invocation_metadata(self) -> Any:
            raise AssertionError("the metadata was built again")

    def lookup_then_read() -> Any:
        table.service(_Details("/pkg.Service/Do", metadata))
        return request_metadata(NoMetadataRead())  # type: ignore[arg-type]

    # grpc.aio looks a call's handler up and runs it in the call's own task (its own context).
    assert copy_context().run(lookup_then_read) is metadata
