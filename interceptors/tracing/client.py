"""Tracing, client side: the trace context of the call being served carried on outgoing calls.

As client interceptors (:func:`tracing_client_interceptors`, instrumentation-grpc's spans when
spans record), or without any (:class:`OutgoingTrace`, for the gateway's proxy).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

import grpc
import grpc.aio
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import aio_client_interceptors
from opentelemetry.trace import SpanKind
from opentelemetry.trace.status import Status, StatusCode

from interceptors.call_details import details_interceptors
from interceptors.tracing.context import Tracing, trace_headers


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
        self._tracer = tracing.provider.get_tracer("interceptors.tracing")

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
