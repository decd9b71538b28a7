"""AIP-193 errors: a `google.rpc.Status` with typed details, readable by clients in any language.

Domain and servicer code raise `ApiError`; `ApiError.abort(context)` sends it as the call's
status, with the details in the standard `grpc-status-details-bin` trailer (grpcio-status).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from agentmesh.common.v1 import error_reason_pb2

DOMAIN = "agentmesh.dev"


class ApiError(Exception):
    """An error meant for the caller: a status code, an actionable message and AIP-193 details."""

    def __init__(self, code: grpc.StatusCode, message: str, details: Sequence[Message] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = tuple(details)

    def to_status(self) -> grpc.Status:
        packed = []
        for detail in self.details:
            any_ = any_pb2.Any()
            any_.Pack(detail)
            packed.append(any_)
        proto = status_pb2.Status(code=self.code.value[0], message=self.message, details=packed)
        return rpc_status.to_status(proto)

    async def abort(self, context: grpc.aio.ServicerContext[object, object]) -> NoReturn:
        status = self.to_status()
        await context.abort(status.code, status.details, status.trailing_metadata)
        raise AssertionError("unreachable: context.abort raises")  # pragma: no cover

    def __repr__(self) -> str:
        return f"ApiError({self.code.name}, {self.message!r})"


# The reasons clients may branch on are a contract (agentmesh.common.v1.ErrorReason); an
# unlisted one is a programming error, caught by any test that reaches it.
KNOWN_REASONS = frozenset(
    name.removeprefix("ERROR_REASON_")
    for name in error_reason_pb2.ErrorReason.DESCRIPTOR.values_by_name
    if name != "ERROR_REASON_UNSPECIFIED"
)


def error_info(reason: str, **metadata: str) -> error_details_pb2.ErrorInfo:
    if reason not in KNOWN_REASONS:
        raise ValueError(f"ErrorInfo reason {reason!r} is not in agentmesh.common.v1.ErrorReason")
    return error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata)


def retry_info(after_s: float) -> error_details_pb2.RetryInfo:
    delay = duration_pb2.Duration()
    delay.FromMilliseconds(max(0, round(after_s * 1000)))
    return error_details_pb2.RetryInfo(retry_delay=delay)


def invalid_argument(violations: Iterable[tuple[str, str]]) -> ApiError:
    """INVALID_ARGUMENT with one BadRequest field violation per (field path, what is wrong)."""
    pairs = list(violations)
    bad_request = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
            for field, description in pairs
        ]
    )
    message = "; ".join(f"{field}: {description}" for field, description in pairs)
    return ApiError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"invalid request: {message}",
        [bad_request, error_info("INVALID_FIELD", fields=",".join(f for f, _ in pairs))],
    )


def not_found(kind: str, resource_id: str) -> ApiError:
    return ApiError(
        grpc.StatusCode.NOT_FOUND,
        f"{kind} {resource_id!r} does not exist",
        [
            error_details_pb2.ResourceInfo(resource_type=kind, resource_name=resource_id),
            error_info("NOT_FOUND", resource_type=kind),
        ],
    )


def failed_precondition(message: str, *, reason: str = "INVALID_STATE", **metadata: str) -> ApiError:
    return ApiError(grpc.StatusCode.FAILED_PRECONDITION, message, [error_info(reason, **metadata)])


def aborted(message: str, *, reason: str, retry_after_s: float, **metadata: str) -> ApiError:
    """A conflict with concurrent requests (AIP-193: ABORTED); the call may be retried as it was."""
    return ApiError(grpc.StatusCode.ABORTED, message, [error_info(reason, **metadata), retry_info(retry_after_s)])


def unavailable(message: str, *, reason: str, retry_after_s: float | None = None, **metadata: str) -> ApiError:
    details: list[Message] = [error_info(reason, **metadata)]
    if retry_after_s is not None:
        details.append(retry_info(retry_after_s))
    return ApiError(grpc.StatusCode.UNAVAILABLE, message, details)


def resource_exhausted(
    message: str, *, reason: str = "RATE_LIMITED", retry_after_s: float | None = None, **metadata: str
) -> ApiError:
    details: list[Message] = [error_info(reason, **metadata)]
    if retry_after_s is not None:
        details.append(retry_info(retry_after_s))
    return ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED, message, details)


def status_details(error: grpc.aio.AioRpcError) -> list[Message]:
    """Unpack the AIP-193 details of an error a client received (empty when it has none)."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is None:
        return []
    known: list[type[Message]] = [
        error_details_pb2.BadRequest,
        error_details_pb2.ErrorInfo,
        error_details_pb2.RetryInfo,
        error_details_pb2.QuotaFailure,
        error_details_pb2.ResourceInfo,
        error_details_pb2.PreconditionFailure,
    ]
    out: list[Message] = []
    for any_ in status.details:
        for cls in known:
            if any_.Is(cls.DESCRIPTOR):
                msg = cls()
                any_.Unpack(msg)
                out.append(msg)
                break
    return out


_Self = TypeVar("_Self")
_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
_Ctx = TypeVar("_Ctx", bound=grpc.aio.ServicerContext[Any, Any])


def api_errors(
    method: Callable[[_Self, _Req, _Ctx], Awaitable[_Resp]],
) -> Callable[[_Self, _Req, _Ctx], Coroutine[Any, Any, _Resp]]:
    """Decorate a unary servicer method so a raised ApiError becomes the call's status."""

    @functools.wraps(method)
    async def wrapper(self: _Self, request: _Req, context: _Ctx) -> _Resp:
        try:
            return await method(self, request, context)
        except ApiError as error:
            await error.abort(context)

    return wrapper


def api_errors_stream(
    method: Callable[[_Self, _Req, _Ctx], AsyncIterator[_Resp]],
) -> Callable[[_Self, _Req, _Ctx], AsyncIterator[_Resp]]:
    """The same for a server-streaming servicer method (an async generator)."""

    @functools.wraps(method)
    async def wrapper(self: _Self, request: _Req, context: _Ctx) -> AsyncIterator[_Resp]:
        try:
            async for item in method(self, request, context):
                yield item
        except ApiError as error:
            await error.abort(context)

    return wrapper
