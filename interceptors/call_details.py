"""Client interceptors that only rewrite a call's details (metadata, timeout) before it starts.

grpc.aio registers an interceptor object for the first call kind it implements only, so a
concern that applies to every kind needs four objects; this builds them around one function.
Deadline propagation, trace-context injection and token forwarding are all of this shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import grpc.aio

from interceptors._typing import (
    StreamStreamClientInterceptorBase,
    StreamUnaryClientInterceptorBase,
    UnaryStreamClientInterceptorBase,
    UnaryUnaryClientInterceptorBase,
)

DetailsTransform = Callable[[grpc.aio.ClientCallDetails], grpc.aio.ClientCallDetails]


class _Transforming:
    def __init__(self, transform: DetailsTransform) -> None:
        self._transform = transform


class _UnaryUnary(_Transforming, UnaryUnaryClientInterceptorBase):
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._transform(client_call_details), request)


class _UnaryStream(_Transforming, UnaryStreamClientInterceptorBase):
    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._transform(client_call_details), request)


class _StreamUnary(_Transforming, StreamUnaryClientInterceptorBase):
    async def intercept_stream_unary(self, continuation: Any, client_call_details: Any, requests: Any) -> Any:
        return await continuation(self._transform(client_call_details), requests)


class _StreamStream(_Transforming, StreamStreamClientInterceptorBase):
    async def intercept_stream_stream(self, continuation: Any, client_call_details: Any, requests: Any) -> Any:
        return await continuation(self._transform(client_call_details), requests)


def details_interceptors(transform: DetailsTransform) -> list[grpc.aio.ClientInterceptor]:
    """One interceptor per call kind, each applying ``transform`` to the call details."""
    # grpc-stubs types channel interceptors as an opaque placeholder, hence the cast.
    return cast(
        list[grpc.aio.ClientInterceptor],
        [_UnaryUnary(transform), _UnaryStream(transform), _StreamUnary(transform), _StreamStream(transform)],
    )
