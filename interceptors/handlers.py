"""Handlers built by the server layer: the same streaming kind as the method's, other behaviour."""

from __future__ import annotations

from typing import Any

import grpc

from interceptors._typing import Context, Handler


def rejecting_handler(like: Handler, status: grpc.Status) -> Handler:
    """A handler of the same streaming kind as ``like`` that ends every call with ``status``.

    Returned from ``intercept_service`` so a rejection costs no handler work. A coroutine
    behaviour is valid for all four kinds in grpc.aio (streaming kinds use the
    reader/writer API), so one function serves them all.
    """

    async def reject(_request: Any, context: Context) -> None:
        await context.abort(status.code, status.details, status.trailing_metadata)

    deserializer = like.request_deserializer
    serializer = like.response_serializer
    if like.request_streaming and like.response_streaming:
        return grpc.stream_stream_rpc_method_handler(reject, deserializer, serializer)
    if like.request_streaming:
        return grpc.stream_unary_rpc_method_handler(reject, deserializer, serializer)
    if like.response_streaming:
        return grpc.unary_stream_rpc_method_handler(reject, deserializer, serializer)
    return grpc.unary_unary_rpc_method_handler(reject, deserializer, serializer)
