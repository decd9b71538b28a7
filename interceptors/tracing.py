"""Tracing: OpenTelemetry spans through ``opentelemetry-instrumentation-grpc``, W3C ``traceparent``.

The instrumentation's aio server interceptor costs a small server about a third of its
throughput, and still most of that when the span is sampled out: it extracts the context,
parses the peer, builds attributes and proxies the servicer context on every call
(measured by the tracing scenarios of ``make bench``: several times the server CPU of the fast path
below). So :class:`TracingInterceptor` decides first whether the call can record anything:

* nothing records (no span processor, e.g. no exporter configured), or the caller's
  ``traceparent`` says "not sampled" (our samplers are parent-based): the fast path
  only makes the trace context current (the caller's trace id, a fresh span id) so log
  lines carry the trace id and outgoing calls propagate it;
* otherwise the call goes through the instrumentation's interceptor and records a span.

Every log line written during a call gets ``trace_id``/``span_id`` from
:func:`add_trace_context`, a structlog processor.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import grpc
import grpc.aio
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.status import Status, StatusCode

from interceptors._typing import (
    Context,
    Continuation,
    Handler,
    Responses,
    ServerInterceptorBase,
    StreamBehavior,
    UnaryBehavior,
)
from interceptors.call_details import details_interceptors
from interceptors.outcome import metadata_value, wrap_handler

TRACEPARENT = "traceparent"
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)


@dataclass(frozen=True, slots=True)
class Tracing:
    """A tracer provider and whether anything records its spans (an exporter or processor)."""

    provider: TracerProvider
    records: bool


def setup_tracing(
    *,
    service_name: str,
    otlp_endpoint: str | None = None,
    sample_ratio: float = 1.0,
    span_processors: Sequence[SpanProcessor] = (),
) -> Tracing:
    """A tracer provider for one service: parent-based ratio sampling, OTLP export only if configured."""
    provider = TracerProvider(
        sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
        resource=Resource.create({"service.name": service_name}),
        shutdown_on_exit=False,
    )
    processors = list(span_processors)
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter  # noqa: PLC0415

        processors.append(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint)))
    for processor in processors:
        provider.add_span_processor(processor)
    return Tracing(provider, records=bool(processors))


class _MetadataGetter(Getter[Sequence[tuple[str, Any]]]):
    """Reads invocation metadata (a sequence of pairs) without building a dict per call."""

    def get(self, carrier: Sequence[tuple[str, Any]], key: str) -> list[str] | None:
        value = metadata_value(carrier, key)
        return None if value is None else [value if isinstance(value, str) else value.decode()]

    def keys(self, carrier: Sequence[tuple[str, Any]]) -> list[str]:
        return [item[0] for item in carrier]


_GETTER = _MetadataGetter()


def _not_sampled(traceparent: str | bytes | None) -> bool:
    # version-traceid-spanid-flags; bit 0 of flags is "sampled".
    return isinstance(traceparent, str) and len(traceparent) >= 55 and not int(traceparent[53:55], 16) & 1


class TracingInterceptor(ServerInterceptorBase):
    """A server span per call when it can be recorded; otherwise only the trace context."""

    def __init__(self, *, tracing: Tracing) -> None:
        self._provider = tracing.provider
        self._records = tracing.records
        self._recording = aio_server_interceptor(tracer_provider=tracing.provider)  # type: ignore[no-untyped-call]
        self._fast: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        if self._records and not _not_sampled(metadata_value(handler_call_details.invocation_metadata, TRACEPARENT)):
            return cast(Handler, await self._recording.intercept_service(continuation, handler_call_details))
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        entry = self._fast.get(method)
        if entry is None or entry[0] is not handler:
            entry = (handler, self._context_only(method, handler))
            self._fast[method] = entry
        return entry[1]

    def _context_only(self, method: str, handler: Handler) -> Handler:
        provider = self._provider

        def enter(context: Context) -> object:
            metadata = cast(Sequence[tuple[str, Any]], context.invocation_metadata() or ())
            ids = provider.id_generator
            if metadata_value(metadata, TRACEPARENT) is not None:
                parent = propagate.extract(metadata, getter=_GETTER)
                remote = trace.get_current_span(parent).get_span_context()
                if remote.is_valid:
                    span = NonRecordingSpan(
                        SpanContext(
                            remote.trace_id, ids.generate_span_id(), False, remote.trace_flags, remote.trace_state
                        )
                    )
                    return otel_context.attach(trace.set_span_in_context(span, parent))
            # A new trace: sampled or not as the sampler says, so services that do record follow it.
            trace_id = ids.generate_trace_id()
            decision = provider.sampler.should_sample(None, trace_id, method, SpanKind.SERVER).decision
            flags = _SAMPLED if decision is Decision.RECORD_AND_SAMPLE else _NOT_SAMPLED
            span = NonRecordingSpan(SpanContext(trace_id, ids.generate_span_id(), False, flags))
            return otel_context.attach(trace.set_span_in_context(span))

        def unary(behavior: UnaryBehavior) -> UnaryBehavior:
            async def in_trace(request: Any, context: Context) -> Any:
                token = enter(context)
                try:
                    return await behavior(request, context)
                finally:
                    otel_context.detach(token)  # type: ignore[arg-type]

            return in_trace

        def streaming(behavior: StreamBehavior) -> StreamBehavior:
            async def in_trace(request: Any, context: Context) -> Responses:
                # Attached without detaching: across yields the token may be reset from another
                # context (generator finalization); the call's task context ends with the call.
                enter(context)
                async for response in behavior(request, context):
                    yield response

            return in_trace

        return wrap_handler(handler, unary=unary, streaming=streaming)


def add_trace_context(_: object, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: the current trace and span ids on every log line written during a call."""
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        event_dict["trace_id"] = format(span_context.trace_id, "032x")
        event_dict["span_id"] = format(span_context.span_id, "016x")
    return event_dict


def trace_headers(context: otel_context.Context | None = None) -> list[tuple[str, str]]:
    """The headers carrying ``context`` (default: the current one) to the next hop (W3C traceparent)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return list(carrier.items())


class _Inject:
    """Puts the current trace context in outgoing metadata (the fast path's client side)."""

    def details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        headers = trace_headers()
        if not headers:
            return details
        metadata = list(cast(Iterable[tuple[str, Any]], details.metadata or ()))
        metadata.extend(headers)
        return details._replace(metadata=grpc.aio.Metadata(*metadata))  # type: ignore[attr-defined,no-any-return]


def tracing_client_interceptors(*, tracing: Tracing) -> list[grpc.aio.ClientInterceptor]:
    """Client spans (instrumentation-grpc) when spans record; else only trace context propagation."""
    if tracing.records:
        return cast(
            list[grpc.aio.ClientInterceptor],
            aio_client_interceptors(tracer_provider=tracing.provider),  # type: ignore[no-untyped-call]
        )
    return details_interceptors(_Inject().details)


class OutgoingTrace:
    """Trace context for outgoing calls made without a client interceptor (the gateway's proxy).

    :meth:`start` gives the headers to send and, when the call being served records its span,
    a CLIENT span (named and attributed as instrumentation-grpc names its own) to :meth:`end`
    with the final code. When nothing records, no span object is made at all: the headers carry
    the current context, which the server side already made current.
    """

    def __init__(self, tracing: Tracing) -> None:
        self._records = tracing.records
        self._tracer = tracing.provider.get_tracer(__name__)

    def start(self, method: str) -> tuple[trace.Span | None, list[tuple[str, str]]]:
        if not self._records or not trace.get_current_span().is_recording():
            return None, trace_headers()
        service, _, name = method.lstrip("/").partition("/")
        span = self._tracer.start_span(
            method,
            kind=SpanKind.CLIENT,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
        )
        return span, trace_headers(trace.set_span_in_context(span))

    @staticmethod
    def end(span: trace.Span | None, code: grpc.StatusCode) -> None:
        if span is None:
            return
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code is not grpc.StatusCode.OK:
            span.set_status(Status(StatusCode.ERROR, code.name))
        span.end()
