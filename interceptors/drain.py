"""Refuse new calls while the server drains, so clients fail over instead of being cut off.

Health checks and reflection still pass, so checkers can see NOT_SERVING during the drain.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from rpcstatus.errors import unavailable

_ALWAYS_ALLOWED = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class DrainInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]  # generic only in the stubs
    def __init__(self) -> None:
        self.draining = False
        self._refusal = unavailable(
            "server is shutting down; retry on another instance", reason="DRAINING", retry_after_s=0.1
        )

        async def refuse(request: object, context: grpc.aio.ServicerContext[object, object]) -> None:
            await self._refusal.abort(context)

        async def refuse_stream(request: object, context: grpc.aio.ServicerContext[object, object]) -> None:
            await self._refusal.abort(context)

        self._unary = grpc.unary_unary_rpc_method_handler(refuse)
        self._stream = grpc.stream_stream_rpc_method_handler(refuse_stream)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        if not self.draining or handler_call_details.method.startswith(_ALWAYS_ALLOWED):
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        # The refusal must have the same streaming shape as the real method, or grpc would
        # read the request stream wrongly; bytes in, nothing out.
        if handler.request_streaming or handler.response_streaming:
            return self._stream
        return self._unary
