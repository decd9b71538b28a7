"""AIP-193 statuses where interceptors need them: rejecting a call, failing one locally, reading details.

Statuses are built by ``runtime.errors`` like every other error in the mesh. What is
specific to interceptors lives here: a server interceptor rejects before any handler
runs (a handler of the right streaming kind that only aborts), a client interceptor
fails a call that never reaches the network (an open circuit) with an ``AioRpcError``
shaped like a remote one, and retries read details from a finished call's trailers.
"""

from __future__ import annotations

from typing import Any, TypeVar

import grpc
import grpc.aio
from google.protobuf.message import Message
from google.rpc import status_pb2

from interceptors._typing import Context, Handler
from runtime.errors import ApiError

_STATUS_DETAILS_KEY = "grpc-status-details-bin"

M = TypeVar("M", bound=Message)


def error_status(code: grpc.StatusCode, message: str, *details: Message) -> grpc.Status:
    """A ``grpc.Status`` whose trailing metadata carries ``details`` (runtime.errors' encoding)."""
    return ApiError(code, message, details).to_status()


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


def client_error(status: grpc.Status) -> grpc.aio.AioRpcError:
    """An ``AioRpcError`` for a call failed locally, indistinguishable in shape from a remote one."""
    return grpc.aio.AioRpcError(
        code=status.code,
        initial_metadata=grpc.aio.Metadata(),
        trailing_metadata=grpc.aio.Metadata(*status.trailing_metadata),
        details=status.details,
        debug_error_string=None,
    )


def status_details_bytes(trailing_metadata: Any) -> bytes | None:
    if not trailing_metadata:
        return None
    for key, value in trailing_metadata:
        if key == _STATUS_DETAILS_KEY:
            return value if isinstance(value, bytes) else None
    return None


def find_detail(error: grpc.aio.AioRpcError, kind: type[M]) -> M | None:
    """The first detail of type ``kind`` in an error's google.rpc.Status, if any."""
    return find_detail_in(error.trailing_metadata(), kind)


def find_detail_in(trailing_metadata: Any, kind: type[M]) -> M | None:
    """The first detail of type ``kind`` in the google.rpc.Status carried by trailing metadata."""
    raw = status_details_bytes(trailing_metadata)
    if raw is None:
        return None
    proto = status_pb2.Status.FromString(raw)
    for any_detail in proto.details:
        if any_detail.Is(kind.DESCRIPTOR):
            found = kind()
            any_detail.Unpack(found)
            return found
    return None
