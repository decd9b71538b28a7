"""Type names for grpc.aio interceptors that the grpc-stubs package spells awkwardly.

grpc-stubs declares the interceptor bases and ``RpcMethodHandler`` as generics, but at
run time they are plain classes, so a subscripted base only exists for the type checker.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
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
Continuation: TypeAlias = Callable[[grpc.HandlerCallDetails], Awaitable[Handler]]
Responses: TypeAlias = AsyncGenerator[Any, None]
# grpc.aio passes a behaviour either the deserialized request or an async iterator of them.
UnaryBehavior: TypeAlias = Callable[[Any, Context], Awaitable[Any]]
StreamBehavior: TypeAlias = Callable[[Any, Context], Responses]
