"""The trace context every side shares: the tracer provider, the ids of the call being served,
and the W3C ``traceparent`` headers that carry them to the next hop.

The server side (``interceptors.tracing.server``) sets the context of each call; the client side
(``interceptors.tracing.client``) and log lines (:func:`add_trace_context`) read it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, MutableMapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, NamedTuple

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

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


call_trace: ContextVar[CallTrace | None] = ContextVar("agentmesh_call_trace", default=None)
new_tuple = tuple.__new__


# A version-00 traceparent: lowercase hex fields of fixed width (W3C Trace Context, section 3.2).
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
ZERO_TRACE, ZERO_SPAN = "0" * 32, "0" * 16


def parse_traceparent(value: str | bytes | None) -> tuple[str, bool] | None:
    """(trace id as lowercase hex, sampled) of a version-00 ``traceparent``; None when absent or malformed."""
    if not isinstance(value, str):
        return None
    match = _TRACEPARENT.fullmatch(value)
    if match is None:
        return None
    trace_hex, span_hex, flags = match.groups()
    if trace_hex == ZERO_TRACE or span_hex == ZERO_SPAN:
        return None
    return trace_hex, bool(int(flags, 16) & 1)


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) in hex of the call being served, or of the current span; None outside any."""
    call = call_trace.get()
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
    call, current = call_trace.get(), otel_context.get_current()

    def restore() -> None:
        call_trace.set(call)
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
        call = call_trace.get()
        if call is not None:
            return call.headers()
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return list(carrier.items())
