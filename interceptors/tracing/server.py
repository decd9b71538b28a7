"""Tracing, server side: OpenTelemetry spans through ``opentelemetry-instrumentation-grpc``, W3C ``traceparent``.

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
from collections.abc import Sequence
from typing import Any, cast

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext

from interceptors._typing import Context, Handler, Responses, StreamBehavior, UnaryBehavior
from interceptors.layer import Concern, MethodInfo, Wrap, rebuild
from interceptors.outcome import metadata_value, request_metadata
from interceptors.selector import Matcher, every_method
from interceptors.tracing.context import (
    TRACEPARENT,
    TRACESTATE,
    ZERO_SPAN,
    ZERO_TRACE,
    CallTrace,
    Tracing,
    call_trace,
    new_tuple,
    parse_traceparent,
)


class _MetadataGetter(Getter[Sequence[tuple[str, Any]]]):
    """Reads invocation metadata (a sequence of pairs) without building a dict per call."""

    def get(self, carrier: Sequence[tuple[str, Any]], key: str) -> list[str] | None:
        value = metadata_value(carrier, key)
        return None if value is None else [value if isinstance(value, str) else value.decode()]

    def keys(self, carrier: Sequence[tuple[str, Any]]) -> list[str]:
        return [item[0] for item in carrier]


_GETTER = _MetadataGetter()


def _span_hex(span_hex: str) -> str:
    return "0" * 15 + "1" if span_hex == ZERO_SPAN else span_hex


def _not_sampled(traceparent: str | bytes | None) -> bool:
    parsed = parse_traceparent(traceparent)
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
        var = call_trace

        def enter(context: Context) -> None:
            # One draw of random bytes, hex-encoded once: the cheapest way Python has to new ids.
            metadata = request_metadata(context)
            traceparent = metadata_value(metadata, TRACEPARENT)
            parent = None if traceparent is None else parse_traceparent(traceparent)
            if parent is not None:
                state = metadata_value(metadata, TRACESTATE)
                tracestate = state if isinstance(state, str) else None
                span_hex = _span_hex(randbytes(8).hex())
                var.set(new_tuple(CallTrace, (parent[0], span_hex, parent[1], tracestate)))
                return
            raw = randbytes(24)
            ids = raw.hex()
            trace_hex, span_hex = ids[:32], ids[32:]
            if trace_hex == ZERO_TRACE:  # all-zero ids are invalid (W3C); one in 2**128
                trace_hex = "0" * 31 + "1"
            span_hex = _span_hex(span_hex)
            # TraceIdRatioBased samples on the trace id's low 64 bits.
            sampled = always or int.from_bytes(raw[8:16]) < bound
            var.set(new_tuple(CallTrace, (trace_hex, span_hex, sampled, None)))

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
