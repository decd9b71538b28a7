"""Tracing: W3C trace context and OpenTelemetry spans, server side and client side.

``context`` holds what both sides share (the provider, the call's ids, the headers), ``server``
the chain's concern, ``client`` what carries the context on outgoing calls.
"""

from interceptors.tracing.client import OutgoingTrace, tracing_client_interceptors
from interceptors.tracing.context import (
    TRACEPARENT,
    TRACESTATE,
    CallTrace,
    Tracing,
    add_trace_context,
    capture_trace,
    current_ids,
    current_trace_id,
    setup_tracing,
    trace_headers,
)
from interceptors.tracing.server import TracingInterceptor

__all__ = [
    "TRACEPARENT",
    "TRACESTATE",
    "CallTrace",
    "OutgoingTrace",
    "Tracing",
    "TracingInterceptor",
    "add_trace_context",
    "capture_trace",
    "current_ids",
    "current_trace_id",
    "setup_tracing",
    "trace_headers",
    "tracing_client_interceptors",
]
