"""Run a per-call admission check inside the handler's call, before its behaviour.

``intercept_service`` sees only the method name and metadata. Checks that need the
``ServicerContext`` (the TLS peer) or state set by an outer interceptor for this very
call (the verified caller) run here instead: the handler is rebuilt, same kind and
same (de)serializers, with the check in front of the original behaviour.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeAlias

import grpc
import grpc.aio

from interceptors._typing import Context, Handler

# Returns None to admit the call, or the status to end it with.
Check: TypeAlias = Callable[[Context], grpc.Status | None]


async def _refuse(context: Context, status: grpc.Status) -> None:
    await context.abort(status.code, status.details, status.trailing_metadata)


def _unary(behavior: Any, check: Check) -> Any:
    async def admitted(request: Any, context: Context) -> Any:
        refusal = check(context)
        if refusal is not None:
            await _refuse(context, refusal)
        return await behavior(request, context)

    return admitted


def _streaming(behavior: Any, check: Check) -> Any:
    # grpc.aio picks the streaming API by the behaviour's kind, so keep the kind.
    if inspect.isasyncgenfunction(behavior):

        async def admitted_stream(request: Any, context: Context) -> AsyncIterator[Any]:
            refusal = check(context)
            if refusal is not None:
                await _refuse(context, refusal)
            async for response in behavior(request, context):
                yield response

        return admitted_stream

    async def admitted_writer(request: Any, context: Context) -> None:
        refusal = check(context)
        if refusal is not None:
            await _refuse(context, refusal)
        await behavior(request, context)

    return admitted_writer


def guarded(handler: Handler, check: Check) -> Handler:
    """``handler`` with ``check`` run first on every call."""
    for behavior in (handler.unary_unary, handler.unary_stream, handler.stream_unary, handler.stream_stream):
        if behavior is not None and not (inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)):
            raise TypeError(f"{behavior!r}: admission checks wrap async (grpc.aio) behaviours only")
    deserializer = handler.request_deserializer
    serializer = handler.response_serializer
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(_streaming(handler.stream_stream, check), deserializer, serializer)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(_unary(handler.stream_unary, check), deserializer, serializer)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(_streaming(handler.unary_stream, check), deserializer, serializer)
    return grpc.unary_unary_rpc_method_handler(_unary(handler.unary_unary, check), deserializer, serializer)


class GuardedHandlers:
    """Guard each method's handler once, not once per call.

    A generic handler returns the same ``RpcMethodHandler`` for a method on every call,
    so the guarded one is cached by method and rebuilt only if the inner one changes.
    Only methods that resolved to a handler are cached: the size is bounded by the
    server's own API, not by names clients send.
    """

    __slots__ = ("_check_for", "_entries")

    def __init__(self, check_for: Callable[[str], Check]) -> None:
        self._check_for = check_for
        self._entries: dict[str, tuple[Handler, Handler]] = {}

    def get(self, method: str, handler: Handler) -> Handler:
        entry = self._entries.get(method)
        if entry is not None and entry[0] is handler:
            return entry[1]
        wrapped = guarded(handler, self._check_for(method))
        self._entries[method] = (handler, wrapped)
        return wrapped
