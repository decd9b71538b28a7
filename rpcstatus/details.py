"""AIP-193 statuses as values: building one, failing a call locally, reading details back.

Statuses are built by ``rpcstatus.errors`` like every other error in the mesh. A client
interceptor fails a call that never reaches the network (an open circuit) with an
``AioRpcError`` shaped like a remote one, and retries read details from a finished call's
trailers.
"""

from __future__ import annotations

from typing import Any, TypeVar

import grpc
import grpc.aio
from google.protobuf.message import Message
from google.rpc import status_pb2

from rpcstatus.errors import ApiError

_STATUS_DETAILS_KEY = "grpc-status-details-bin"

M = TypeVar("M", bound=Message)


def error_status(code: grpc.StatusCode, message: str, *details: Message) -> grpc.Status:
    """A ``grpc.Status`` whose trailing metadata carries ``details`` (rpcstatus.errors' encoding)."""
    return ApiError(code, message, details).to_status()


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
