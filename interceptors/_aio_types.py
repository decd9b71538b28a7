"""Type names for grpc.aio interceptors that the grpc-stubs package spells awkwardly.

grpc-stubs declares the interceptor bases, ``RpcMethodHandler`` and ``ServicerContext``
as generics, but at run time they are plain classes: subscripted forms exist for the
type checker only, so they are defined under ``TYPE_CHECKING``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
import grpc.aio

if TYPE_CHECKING:
    Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]
    ServerInterceptorBase = grpc.aio.ServerInterceptor[Any, Any]
    UnaryUnaryClientInterceptorBase = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    UnaryStreamClientInterceptorBase = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
    StreamUnaryClientInterceptorBase = grpc.aio.StreamUnaryClientInterceptor[Any, Any]
    StreamStreamClientInterceptorBase = grpc.aio.StreamStreamClientInterceptor[Any, Any]
else:
    Context = grpc.aio.ServicerContext
    Handler = grpc.RpcMethodHandler
    ServerInterceptorBase = grpc.aio.ServerInterceptor
    UnaryUnaryClientInterceptorBase = grpc.aio.UnaryUnaryClientInterceptor
    UnaryStreamClientInterceptorBase = grpc.aio.UnaryStreamClientInterceptor
    StreamUnaryClientInterceptorBase = grpc.aio.StreamUnaryClientInterceptor
    StreamStreamClientInterceptorBase = grpc.aio.StreamStreamClientInterceptor

# grpc-stubs leaves grpc.aio.ClientInterceptor opaque; this is what channels accept.
ClientInterceptor: TypeAlias = (
    "UnaryUnaryClientInterceptorBase | UnaryStreamClientInterceptorBase"
    " | StreamUnaryClientInterceptorBase | StreamStreamClientInterceptorBase"
)
Continuation: TypeAlias = Callable[[grpc.HandlerCallDetails], Awaitable["Handler"]]
