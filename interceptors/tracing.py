"""Tracing: OpenTelemetry spans through ``opentelemetry-instrumentation-grpc``, W3C ``traceparent``.

The instrumentation's aio server interceptor costs a small server about a third of its
throughput, and still most of that when the span is sampled out: it extracts the context,
parses the peer, builds attributes and proxies the servicer context on every call. So the
tracing concern decides, per method when the chain is compiled and then per call, whether
the call can record anything:

* nothing records in this process (no span processor, e.g. no exporter configured): no
  OpenTelemetry object is made at all. The caller's ``traceparent`` (or a new trace id,
  sampled as the sampler would say, so services that do record follow it) is kept in a
  plain context variable (:class:`CallTrace`): log lines get its ids from
  :func:`add_trace_context` and outgoing calls carry it on (:func:`trace_headers`);
* spans record, but the caller's ``traceparent`` says "not sampled" (our samplers are
  parent-based): only a non-recording span in the OpenTelemetry context, so the client
  instrumentation's spans of outgoing calls stay unsampled children;
* otherwise the call goes through the instrumentation's interceptor and records a span.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, MutableMapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

import grpc
import grpc.aio
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind
from opentelemetry.trace.status import Status, StatusCode

from interceptors._typing import Context, Handler, Responses, StreamBehavior, UnaryBehavior
from interceptors.call_details import details_interceptors
from interceptors.layer import Concern, MethodInfo, Wrap, rebuild
from interceptors.outcome import metadata_value, request_metadata
from interceptors.selector import Matcher, every_method

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"


@dataclass(frozen=True, slots=True)
class Tracing:
    """A tracer provider and whether anything records its spans (an exporter or processor)."""

    provider: TracerProvider
    records: bool
    # The share of new traces sampled (what the root sampler of ``provider`` decides).
    sample_ratio: float = 1.0


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
    return Tracing(provider, records=bool(processors), sample_ratio=sample_ratio)


class _MetadataGetter(Getter[Sequence[tuple[str, Any]]]):
    """Reads invocation metadata (a sequence of pairs) without building a dict per call."""

    def get(self, carrier: Sequence[tuple[str, Any]], key: str) -> list[str] | None:
        value = metadata_value(carrier, key)
        return None if value is None else [value if isinstance(value, str) else value.decode()]

    def keys(self, carrier: Sequence[tuple[str, Any]]) -> list[str]:
        return [item[0] for item in carrier]


_GETTER = _MetadataGetter()


class CallTrace(NamedTuple):
    """The trace context of the call being served when nothing records: ids only, no span.

    The ids are kept as the hex text logs and headers carry (a caller's trace id is taken
    from its ``traceparent`` as is), so no line formats them again. A named tuple, made per
    call with ``tuple.__new__``, so no Python-level constructor runs.
    """

    trace_hex: str
    span_hex: str
    sampled: bool
    tracestate: str | None

    @property
    def trace_id(self) -> int:
        return int(self.trace_hex, 16)

    @property
    def span_id(self) -> int:
        return int(self.span_hex, 16)

    def headers(self) -> list[tuple[str, str]]:
        """W3C headers for an outgoing call: this call's span is the parent."""
        parent = f"00-{self.trace_hex}-{self.span_hex}-{'01' if self.sampled else '00'}"
        if self.tracestate:
            return [(TRACEPARENT, parent), (TRACESTATE, self.tracestate)]
        return [(TRACEPARENT, parent)]


_call_trace: ContextVar[CallTrace | None] = ContextVar("agentmesh_call_trace", default=None)
_new_tuple = tuple.__new__


# A version-00 traceparent: lowercase hex fields of fixed width (W3C Trace Context, section 3.2).
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16


def _parse_traceparent(value: str | bytes | None) -> tuple[str, bool] | None:
    """(trace id as lowercase hex, sampled) of a version-00 ``traceparent``; None when absent or malformed."""
    if not isinstance(value, str):
        return None
    match = _TRACEPARENT.fullmatch(value)
    if match is None:
        return None
    trace_hex, span_hex, flags = match.groups()
    if trace_hex == _ZERO_TRACE or span_hex == _ZERO_SPAN:
        return None
    return trace_hex, bool(int(flags, 16) & 1)


def _span_hex(span_hex: str) -> str:
    return "0" * 15 + "1" if span_hex == _ZERO_SPAN else span_hex


def _not_sampled(traceparent: str | bytes | None) -> bool:
    parsed = _parse_traceparent(traceparent)
    return parsed is not None and not parsed[1]


class _Details:
    """The ``grpc.HandlerCallDetails`` the instrumentation's interceptor reads."""

    __slots__ = ("invocation_metadata", "method")

    def __init__(self, method: str, invocation_metadata: Any) -> None:
        self.method = method
        self.invocation_metadata = invocation_metadata


class TracingInterceptor(Concern):
    """A server span per call when it can be recorded; otherwise only the trace context."""

    def __init__(self, *, tracing: Tracing, select: Matcher = every_method) -> None:
        self._provider = tracing.provider
        self._records = tracing.records
        # TraceIdRatioBased's rule, applied to new trace ids without building a sampler result.
        self._bound = TraceIdRatioBased.get_bound_for_rate(tracing.sample_ratio)
        self._recording = aio_server_interceptor(tracer_provider=tracing.provider)  # type: ignore[no-untyped-call]
        self.select = select

    def compile(self, info: MethodInfo) -> Wrap:
        if not self._records:
            return self._ids_only()
        return self._recorded(info)

    def _ids_only(self) -> Wrap:
        bound = self._bound
        # With every trace sampled (the default ratio), no id needs its sampling bits read.
        always = bound >= 1 << 64
        randbytes = random.randbytes
        var = _call_trace

        def enter(context: Context) -> None:
            # One draw of random bytes, hex-encoded once: the cheapest way Python has to new ids.
            metadata = request_metadata(context)
            traceparent = metadata_value(metadata, TRACEPARENT)
            parent = None if traceparent is None else _parse_traceparent(traceparent)
            if parent is not None:
                state = metadata_value(metadata, TRACESTATE)
                tracestate = state if isinstance(state, str) else None
                span_hex = _span_hex(randbytes(8).hex())
                var.set(_new_tuple(CallTrace, (parent[0], span_hex, parent[1], tracestate)))
                return
            raw = randbytes(24)
            ids = raw.hex()
            trace_hex, span_hex = ids[:32], ids[32:]
            if trace_hex == _ZERO_TRACE:  # all-zero ids are invalid (W3C); one in 2**128
                trace_hex = "0" * 31 + "1"
            span_hex = _span_hex(span_hex)
            # TraceIdRatioBased samples on the trace id's low 64 bits.
            sampled = always or int.from_bytes(raw[8:16]) < bound
            var.set(_new_tuple(CallTrace, (trace_hex, span_hex, sampled, None)))

        # Set without resetting: grpc.aio runs each call in its own task, whose context ends with it.
        def unary(behavior: UnaryBehavior) -> UnaryBehavior:
            async def in_trace(request: Any, context: Context) -> Any:
                enter(context)
                return await behavior(request, context)

            return in_trace

        def streaming(behavior: StreamBehavior) -> StreamBehavior:
            async def in_trace(request: Any, context: Context) -> Responses:
                enter(context)
                async for response in behavior(request, context):
                    yield response

            return in_trace

        return Wrap(unary=unary, streaming=streaming)

    def _recorded(self, info: MethodInfo) -> Wrap:
        provider = self._provider
        recording = self._recording
        method = info.name

        def unsampled_parent(context: Context) -> object | None:
            """Attach a non-recording child of an unsampled remote parent; None to record instead."""
            metadata: Sequence[tuple[str, Any]] = request_metadata(context) or ()
            if not _not_sampled(metadata_value(metadata, TRACEPARENT)):
                return None
            parent = propagate.extract(metadata, getter=_GETTER)
            remote = trace.get_current_span(parent).get_span_context()
            span_id = provider.id_generator.generate_span_id()
            span = NonRecordingSpan(
                SpanContext(remote.trace_id, span_id, False, remote.trace_flags, remote.trace_state)
            )
            return otel_context.attach(trace.set_span_in_context(span, parent))

        async def recorded_handler(inner: Handler, context: Context) -> Handler:
            async def continuation(_details: Any) -> Handler:
                return inner

            details = _Details(method, request_metadata(context))
            return cast(Handler, await recording.intercept_service(continuation, details))

        def unary(behavior: UnaryBehavior) -> UnaryBehavior:
            inner = rebuild(info, behavior)

            async def in_trace(request: Any, context: Context) -> Any:
                token = unsampled_parent(context)
                if token is not None:
                    try:
                        return await behavior(request, context)
                    finally:
                        otel_context.detach(token)  # type: ignore[arg-type]
                handler = await recorded_handler(inner, context)
                run = handler.stream_unary if info.request_streaming else handler.unary_unary
                return await cast(UnaryBehavior, run)(request, context)

            return in_trace

        def streaming(behavior: StreamBehavior) -> StreamBehavior:
            inner = rebuild(info, behavior)

            async def in_trace(request: Any, context: Context) -> Responses:
                # Attached without detaching: across yields the token may be reset from another
                # context (generator finalization); the call's task context ends with the call.
                if unsampled_parent(context) is None:
                    handler = await recorded_handler(inner, context)
                    run = handler.stream_stream if info.request_streaming else handler.unary_stream
                    responses = cast(StreamBehavior, run)(request, context)
                else:
                    responses = behavior(request, context)
                async for response in responses:
                    yield response

            return in_trace

        return Wrap(unary=unary, streaming=streaming)


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) in hex of the call being served, or of the current span; None outside any."""
    call = _call_trace.get()
    if call is not None:
        return call.trace_hex, call.span_hex
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return f"{span_context.trace_id:032x}", f"{span_context.span_id:016x}"


def current_trace_id() -> str | None:
    """The trace id (hex) of the call being served (or of the current span), if there is one."""
    ids = current_ids()
    return None if ids is None else ids[0]


def capture_trace() -> Callable[[], None]:
    """A function that makes the current trace context current again where it is run.

    For work that outlives the call but belongs to its trace: run it in the fresh
    ``contextvars.Context`` the work executes in (``context.run(capture_trace())``).
    """
    call, current = _call_trace.get(), otel_context.get_current()

    def restore() -> None:
        _call_trace.set(call)
        otel_context.attach(current)

    return restore


def add_trace_context(_: object, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: the current trace and span ids on every log line written during a call."""
    ids = current_ids()
    if ids is not None:
        event_dict["trace_id"], event_dict["span_id"] = ids
    return event_dict


def trace_headers(context: otel_context.Context | None = None) -> list[tuple[str, str]]:
    """The headers carrying ``context`` (default: the current one) to the next hop (W3C traceparent)."""
    if context is None:
        call = _call_trace.get()
        if call is not None:
            return call.headers()
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
