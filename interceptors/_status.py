"""AIP-193 error statuses for the interceptors: a code, a message a person can act on, details.

Kept private to ``interceptors`` so each interceptor stays usable on its own; handlers
use the shared ``runtime.errors`` helpers.
"""

from __future__ import annotations

from typing import Any, NoReturn

import grpc
import grpc.aio
from google.protobuf import any_pb2, duration_pb2, message
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status


def status(code: grpc.StatusCode, text: str, *details: message.Message) -> grpc.Status:
    """A ``grpc.Status`` carrying a ``google.rpc.Status`` with ``details`` in ``grpc-status-details-bin``."""
    packed = []
    for detail in details:
        item = any_pb2.Any()
        item.Pack(detail)
        packed.append(item)
    result: grpc.Status = rpc_status.to_status(
        status_pb2.Status(code=code.value[0], message=text, details=packed)
    )
    return result


def bad_request(field: str, description: str) -> error_details_pb2.BadRequest:
    return error_details_pb2.BadRequest(
        field_violations=[error_details_pb2.BadRequest.FieldViolation(field=field, description=description)]
    )


def retry_info(delay_seconds: float) -> error_details_pb2.RetryInfo:
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(int(delay_seconds * 1e9))
    return error_details_pb2.RetryInfo(retry_delay=delay)


async def abort(context: grpc.aio.ServicerContext[Any, Any], status_: grpc.Status) -> NoReturn:
    await context.abort(status_.code, status_.details, status_.trailing_metadata)
    raise AssertionError("unreachable: abort raises")  # pragma: no cover
