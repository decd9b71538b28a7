"""Undecodable request bytes become INVALID_ARGUMENT, not grpc's default UNKNOWN with a stack-derived message.

grpc deserializes before any handler code runs and reports a failure as UNKNOWN, which tells a
client nothing useful. This interceptor takes decoding over for calls with a single request
message: the handler is given raw bytes and parses them itself, so a corrupt payload gets an
actionable status. Streaming requests keep grpc's own decoding.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError

from rpcstatus.errors import invalid_argument

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]


def _decoding(
    behavior: Callable[..., Any], deserialize: Callable[[bytes], Any], method: str, streaming: bool
) -> Callable[..., Any]:
    def refusal() -> Exception:
        return invalid_argument([("(request)", f"is not a valid protobuf message for {method}")])

    if streaming and not inspect.isasyncgenfunction(behavior):
        # A streaming handler may send with `await context.write(...)` instead of yielding
        # (grpc.health.v1's Watch does): it must be awaited, not iterated.
        async def writing_behavior(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            try:
                request = deserialize(raw)
            except DecodeError:
                await refusal().abort(context)  # type: ignore[attr-defined]
            await behavior(request, context)

        return writing_behavior

    if streaming:

        async def stream_behavior(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                request = deserialize(raw)
            except DecodeError:
                await refusal().abort(context)  # type: ignore[attr-defined]
            async for item in behavior(request, context):
                yield item

        return stream_behavior

    async def unary_behavior(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            request = deserialize(raw)
        except DecodeError:
            await refusal().abort(context)  # type: ignore[attr-defined]
        return await behavior(request, context)

    return unary_behavior


class DecodeInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]  # generic only in the stubs
    def __init__(self) -> None:
        # Wrapped handlers are built once per inner handler, not per call; keyed by identity so
        # an inner interceptor that builds handlers per call still gets its own every time.
        self._cache: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        cached = self._cache.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        behavior = handler.unary_stream if handler.response_streaming else handler.unary_unary
        assert behavior is not None  # grpc sets the behaviour matching the handler's shape
        if handler.response_streaming:
            wrapped = grpc.unary_stream_rpc_method_handler(
                _decoding(behavior, handler.request_deserializer, method, streaming=True),
                response_serializer=handler.response_serializer,
            )
        else:
            wrapped = grpc.unary_unary_rpc_method_handler(
                _decoding(behavior, handler.request_deserializer, method, streaming=False),
                response_serializer=handler.response_serializer,
            )
        self._cache[method] = (handler, wrapped)
        return wrapped
