"""Spans chain parent to child across hops over W3C traceparent; the trace id is on every log line;
calls that cannot record take a fast path that still carries the trace context."""

from __future__ import annotations

import itertools
from typing import Any

import grpc.aio
import structlog
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from structlog.testing import capture_logs

from interceptors.access_log import AccessLogInterceptor
from interceptors.tracing import (
    Tracing,
    TracingInterceptor,
    add_trace_context,
    setup_tracing,
    trace_headers,
    tracing_client_interceptors,
)
from tests.interceptors.probe import Probe, ProbeClient, serve, sv


def _recording(exporter: InMemorySpanExporter, name: str) -> Tracing:
    return setup_tracing(service_name=name, span_processors=[SimpleSpanProcessor(exporter)])


async def _two_hops(upstream: Tracing, downstream: Tracing, client: Tracing, **call: Any) -> tuple[Probe, Probe]:
    """client -> up (a probe that forwards) -> down, each hop traced with its own provider."""
    up, down = Probe(), Probe()

    async def log_it(command: str, context: Any) -> None:
        structlog.get_logger("handler").info("handling", command=command)

    down.hook = log_it
    async with serve(down, [TracingInterceptor(tracing=downstream), AccessLogInterceptor()]) as down_client:

        async def forward(command: str, context: Any) -> None:
            interceptors = tracing_client_interceptors(tracing=upstream)
            async with grpc.aio.insecure_channel(down_client.target, interceptors=interceptors) as channel:
                await ProbeClient(channel).do(sv("ok:down"))

        up.hook = forward
        async with serve(
            up,
            [TracingInterceptor(tracing=upstream), AccessLogInterceptor()],
            tracing_client_interceptors(tracing=client),
        ) as up_client:
            await up_client.do(sv("ok:up"), **call)
    return up, down


async def test_one_trace_spans_every_hop_parent_to_child() -> None:
    exporter = InMemorySpanExporter()
    await _two_hops(_recording(exporter, "up"), _recording(exporter, "down"), _recording(exporter, "client"))
    spans = {
        (span.kind, span.name, span.resource.attributes["service.name"]): span for span in exporter.get_finished_spans()
    }
    do = "/agentmesh.test.Probe/Do"
    chain = [
        spans[(SpanKind.CLIENT, do, "client")],
        spans[(SpanKind.SERVER, do, "up")],
        spans[(SpanKind.CLIENT, do, "up")],
        spans[(SpanKind.SERVER, do, "down")],
    ]
    assert len({span.context.trace_id for span in chain}) == 1
    for parent, child in itertools.pairwise(chain):
        assert child.parent is not None and child.parent.span_id == parent.context.span_id


async def test_every_log_line_of_a_call_carries_its_trace_id() -> None:
    exporter = InMemorySpanExporter()
    with capture_logs(processors=[add_trace_context]) as logs:
        await _two_hops(_recording(exporter, "up"), _recording(exporter, "down"), _recording(exporter, "client"))
    [server_down] = [
        s
        for s in exporter.get_finished_spans()
        if s.kind is SpanKind.SERVER and s.resource.attributes["service.name"] == "down"
    ]
    trace_id = format(server_down.context.trace_id, "032x")
    assert len(logs) == 3  # the handler's line and one access line per hop
    assert all(line["trace_id"] == trace_id for line in logs)
    handler_line = next(line for line in logs if line["event"] == "handling")
    assert handler_line["span_id"] == format(server_down.context.span_id, "016x")


async def test_without_anything_recording_the_trace_context_still_flows_and_is_logged() -> None:
    quiet = setup_tracing(service_name="quiet")
    assert not quiet.records
    with capture_logs(processors=[add_trace_context]) as logs:
        await _two_hops(quiet, quiet, quiet)
    assert len(logs) == 3
    assert len({line["trace_id"] for line in logs}) == 1  # down's lines carry up's trace id
    assert len({line["span_id"] for line in logs}) == 2  # one span per server hop


async def test_a_caller_that_did_not_sample_is_not_recorded_but_keeps_its_trace_id() -> None:
    exporter = InMemorySpanExporter()
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    with capture_logs(processors=[add_trace_context]) as logs:
        await _two_hops(
            _recording(exporter, "up"),
            _recording(exporter, "down"),
            setup_tracing(service_name="client"),
            metadata=(("traceparent", f"00-{trace_id}-00f067aa0ba902b7-00"),),
        )
    assert exporter.get_finished_spans() == ()  # parent-based sampling follows the caller's "not sampled"
    assert {line["trace_id"] for line in logs} == {trace_id}


async def test_streams_on_the_fast_path_carry_the_trace_context() -> None:
    probe = Probe()
    quiet = TracingInterceptor(tracing=setup_tracing(service_name="quiet"))
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    async with serve(probe, [quiet, AccessLogInterceptor()]) as client:
        with capture_logs(processors=[add_trace_context]) as logs:
            call = client.stream(sv("2"), metadata=(("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01"),))
            assert [m.value async for m in call] == ["0", "1"]
    [access] = logs
    assert access["trace_id"] == trace_id and access["span_id"] != "00f067aa0ba902b7"


def test_spans_are_exported_over_otlp_only_when_an_endpoint_is_configured() -> None:
    assert not setup_tracing(service_name="quiet").records
    exporting = setup_tracing(service_name="loud", otlp_endpoint="http://127.0.0.1:4317")
    try:
        assert exporting.records
        assert exporting.provider.resource.attributes["service.name"] == "loud"
    finally:
        exporting.provider.shutdown()


async def test_when_nothing_records_no_span_object_is_made_yet_the_ids_flow_on() -> None:
    probe = Probe()
    seen: dict[str, Any] = {}

    async def look(command: str, context: Any) -> None:
        seen["span"] = trace.get_current_span()
        seen["headers"] = trace_headers()

    probe.hook = look
    quiet = TracingInterceptor(tracing=setup_tracing(service_name="quiet"))
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    async with serve(probe, [quiet]) as client:
        await client.do(sv("ok:a"), metadata=(("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01"),))
    assert seen["span"] is trace.INVALID_SPAN  # nothing in the OpenTelemetry context
    [(key, value)] = seen["headers"]
    version, sent_trace_id, parent_id, flags = value.split("-")
    assert (key, version, sent_trace_id, flags) == ("traceparent", "00", trace_id, "01")
    assert parent_id != "00f067aa0ba902b7"  # this call's own span id is the next hop's parent


async def test_a_malformed_traceparent_starts_a_new_trace() -> None:
    probe = Probe()
    quiet = TracingInterceptor(tracing=setup_tracing(service_name="quiet"))
    async with serve(probe, [quiet, AccessLogInterceptor()]) as client:
        with capture_logs(processors=[add_trace_context]) as logs:
            await client.do(sv("ok:a"), metadata=(("traceparent", "00-zz-not-a-trace"),))
    [access] = logs
    assert len(access["trace_id"]) == 32 and access["trace_id"] != "0" * 32


async def test_new_traces_are_sampled_at_the_configured_ratio_and_say_so_to_the_next_hop() -> None:
    # Nothing records here, yet a service downstream that does record follows the flag sent on.
    flags: dict[float, list[str]] = {}
    for ratio in (0.0, 0.5, 1.0):
        probe = Probe()
        seen: list[str] = []

        async def look(command: str, context: Any, seen: list[str] = seen) -> None:
            [(_, traceparent)] = trace_headers()
            seen.append(traceparent.rsplit("-", 1)[1])

        probe.hook = look
        quiet = TracingInterceptor(tracing=setup_tracing(service_name="quiet", sample_ratio=ratio))
        async with serve(probe, [quiet]) as client:
            for _ in range(200):
                await client.do(sv("ok:a"))
        flags[ratio] = seen
    assert set(flags[0.0]) == {"00"} and set(flags[1.0]) == {"01"}
    # 200 fair draws: fewer than 60 or more than 140 sampled is a one-in-ten-million event.
    assert 60 <= flags[0.5].count("01") <= 140
