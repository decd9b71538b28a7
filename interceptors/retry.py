"""Retries for idempotent calls, as grpc.aio client interceptors (unary and server-streaming).

A call is retried only when repeating it is safe: its method is marked
``option idempotency_level = NO_SIDE_EFFECTS`` or ``IDEMPOTENT`` in the proto (read
from the protobuf descriptor pool), or the caller named the attempt with an
``idempotency-key`` header or a non-empty AIP-155 ``request_id`` field, which the
server's idempotency interceptor uses to answer a repeat with the first outcome.

Each retry waits an exponential backoff with full jitter (``uniform(0, min(cap,
initial * multiplier ** n))``, so a herd of clients spreads out), or longer if the
server's ``google.rpc.RetryInfo`` asks for it. It stops when attempts run out, when the
wait would pass the call's deadline (each attempt gets only the time that is left), when
the status is not one of the retryable codes, or when the circuit breaker is open: a
``CIRCUIT_OPEN`` failure is final, since retrying into it only burns the backoff.
Attempts after the first carry ``x-retry-attempt: <n>`` (2 for the first retry), so
servers can log and count them.

Why an interceptor and not grpc's service-config ``retryPolicy``: the built-in policy
cannot read ``RetryInfo`` from the status details (it honours only its own
``grpc-retry-pushback-ms`` trailer), knows nothing of the circuit breaker, cannot decide
per call from an idempotency key, and sends only ``grpc-previous-rpc-attempts``. Its
one advantage, transparently replaying a client-streaming request, is not needed:
client-streaming and bidi calls are not retried here at all, because their requests
are consumed as they are sent and replaying them would mean buffering unbounded
streams. A server-streaming call is retried only if it has already failed when its
response headers arrive: the interceptor has not handed it to the caller yet, so nothing
was seen (messages that arrived with the failure are dropped with it; the method is
idempotent). Once the stream is running, a failure goes to the caller.

Place the retry interceptors outside the breaker (earlier in the channel's list), so
every attempt passes through the breaker.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterable
from typing import Any, cast

import grpc
import grpc.aio
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor_pool import DescriptorPool
from google.rpc import error_details_pb2
from pydantic import BaseModel, ConfigDict, Field, field_validator

from interceptors._typing import (
    UnaryStreamClientInterceptorBase,
    UnaryUnaryClientInterceptorBase,
)
from interceptors.circuit_breaker import CIRCUIT_OPEN, BreakerSet, BreakerState, CircuitBreaker, breaker_lookup
from rpcstatus.codes import code_set, error_code_names
from rpcstatus.details import find_detail_in
from rpcstatus.errors import DOMAIN

ATTEMPT_HEADER = "x-retry-attempt"
IDEMPOTENCY_HEADER = "idempotency-key"

_SAFE_LEVELS = frozenset(
    {
        descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS,
        descriptor_pb2.MethodOptions.IDEMPOTENT,
    }
)


class RetryPolicy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # Total attempts, the first included.
    max_attempts: int = Field(default=3, ge=1, le=10)
    initial_backoff_seconds: float = Field(default=0.05, gt=0)
    max_backoff_seconds: float = Field(default=2.0, gt=0)
    backoff_multiplier: float = Field(default=2.0, ge=1)
    retryable_codes: tuple[str, ...] = ("UNAVAILABLE", "RESOURCE_EXHAUSTED", "ABORTED")
    # A server asking (via RetryInfo) for a longer wait than this is not retried.
    max_retry_info_seconds: float = Field(default=10.0, ge=0)
    # AIP-155 request field whose non-empty value makes a call safe to repeat.
    request_id_field: str = "request_id"

    @field_validator("retryable_codes")
    @classmethod
    def _known_codes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return error_code_names(value)


class Idempotency:
    """Decides whether a call may be repeated; memoised per method and message type."""

    def __init__(self, *, pool: DescriptorPool | None = None, request_id_field: str = "request_id") -> None:
        self._pool = pool if pool is not None else descriptor_pool.Default()
        self._request_id_field = request_id_field
        self._methods: dict[str, bool] = {}
        self._has_request_id: dict[type, bool] = {}

    def method_is_safe(self, method: str) -> bool:
        """True if the proto marks ``/pkg.Service/Method`` NO_SIDE_EFFECTS or IDEMPOTENT."""
        safe = self._methods.get(method)
        if safe is None:
            safe = self._methods[method] = self._lookup(method)
        return safe

    def _lookup(self, method: str) -> bool:
        service_name, _, method_name = method.lstrip("/").partition("/")
        try:
            service = self._pool.FindServiceByName(service_name)
        except KeyError:
            return False  # not in the pool: nothing says it is safe
        descriptor = service.methods_by_name.get(method_name)
        return descriptor is not None and descriptor.GetOptions().idempotency_level in _SAFE_LEVELS

    def call_is_safe(self, method: str, request: Any, metadata: Iterable[tuple[str, Any]] | None) -> bool:
        if self.method_is_safe(method):
            return True
        if metadata and any(key == IDEMPOTENCY_HEADER and value for key, value in metadata):
            return True
        kind = type(request)
        has_field = self._has_request_id.get(kind)
        if has_field is None:
            fields = getattr(getattr(request, "DESCRIPTOR", None), "fields_by_name", {})
            has_field = self._has_request_id[kind] = self._request_id_field in fields
        return has_field and bool(getattr(request, self._request_id_field))


def _method_name(details: grpc.aio.ClientCallDetails) -> str:
    method = details.method
    return method.decode() if isinstance(method, bytes) else str(method)


def _retry_info_seconds(trailing_metadata: Any) -> float | None:
    info = find_detail_in(trailing_metadata, error_details_pb2.RetryInfo)
    return None if info is None else float(info.retry_delay.ToNanoseconds()) / 1e9


def _is_circuit_open(trailing_metadata: Any) -> bool:
    info = find_detail_in(trailing_metadata, error_details_pb2.ErrorInfo)
    return info is not None and info.reason == CIRCUIT_OPEN and info.domain == DOMAIN


class Retrier:
    """The retry policy as a plain object: which calls may be repeated, and how long to wait.

    Shared by the unary and server-streaming interceptors of a channel, and used as is by the
    gateway's proxy, which retries inside its handler rather than through an interceptor.
    """

    def __init__(
        self,
        policy: RetryPolicy | None = None,
        *,
        breakers: CircuitBreaker | BreakerSet | None = None,
        pool: DescriptorPool | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self._policy = policy = policy or RetryPolicy()
        self._codes = code_set(policy.retryable_codes)
        self._idempotency = Idempotency(pool=pool, request_id_field=policy.request_id_field)
        self._breaker_for = None if breakers is None else breaker_lookup(breakers)
        self._rng = rng or random.Random()
        self.sleep = sleep

    @property
    def enabled(self) -> bool:
        return self._policy.max_attempts > 1

    def method_is_safe(self, method: str) -> bool:
        """True if every call of ``method`` may be repeated (its proto marks it so)."""
        return self.enabled and self._idempotency.method_is_safe(method)

    def call_is_safe(self, method: str, request: Any, metadata: Iterable[tuple[str, Any]] | None) -> bool:
        """True if this call may be repeated: a safe method, or one named by an idempotency key."""
        return self.enabled and self._idempotency.call_is_safe(method, request, metadata)

    def applies(self, details: grpc.aio.ClientCallDetails, request: Any) -> bool:
        return self.call_is_safe(_method_name(details), request, details.metadata)

    @staticmethod
    def attempt_metadata(metadata: Iterable[tuple[str, Any]] | None, attempt: int) -> list[tuple[str, Any]]:
        """``metadata`` for attempt ``attempt`` (2, 3, ...): its ``x-retry-attempt`` header replaced."""
        return [*(item for item in metadata or () if item[0] != ATTEMPT_HEADER), (ATTEMPT_HEADER, str(attempt))]

    def delay_before(
        self, method: str, attempt: int, code: grpc.StatusCode, trailing_metadata: Any, deadline: float | None
    ) -> float | None:
        """Seconds to wait before attempt ``attempt`` (2, 3, ...), or None to stop."""
        policy = self._policy
        if attempt > policy.max_attempts or code not in self._codes:
            return None
        if _is_circuit_open(trailing_metadata):
            return None
        if self._breaker_for is not None and self._breaker_for(method).state is BreakerState.OPEN:
            return None
        ceiling = min(
            policy.max_backoff_seconds,
            policy.initial_backoff_seconds * policy.backoff_multiplier ** (attempt - 2),
        )
        delay = self._rng.uniform(0, ceiling)
        asked = _retry_info_seconds(trailing_metadata)
        if asked is not None:
            if asked > policy.max_retry_info_seconds:
                return None
            delay = max(delay, asked)
        if deadline is not None and asyncio.get_running_loop().time() + delay >= deadline:
            return None
        return delay

    @staticmethod
    def attempt_details(
        details: grpc.aio.ClientCallDetails, attempt: int, deadline: float | None
    ) -> grpc.aio.ClientCallDetails:
        if attempt == 1:
            return details
        metadata = grpc.aio.Metadata(*Retrier.attempt_metadata(details.metadata, attempt))
        timeout = None if deadline is None else max(0.0, deadline - asyncio.get_running_loop().time())
        return grpc.aio.ClientCallDetails(
            details.method, timeout, metadata, details.credentials, details.wait_for_ready
        )

    async def run(
        self,
        continuation: Callable[..., Any],
        details: grpc.aio.ClientCallDetails,
        request: Any,
        settle: Callable[[Any], Any],
    ) -> Any:
        """Attempt until a call settles OK, fails for good, or time or attempts run out.

        ``settle(call)`` waits until the call's fate is known and returns whether it
        failed before the caller could see anything (None if it may be returned as is).
        """
        deadline = None if details.timeout is None else asyncio.get_running_loop().time() + details.timeout
        method = _method_name(details)
        attempt = 1
        while True:
            try:
                call = await continuation(self.attempt_details(details, attempt, deadline), request)
            except grpc.aio.AioRpcError as error:
                # An inner interceptor (the breaker) failed the call without sending it.
                delay = self.delay_before(method, attempt + 1, error.code(), error.trailing_metadata(), deadline)
                if delay is None:
                    raise
            else:
                failure = await settle(call)
                if failure is None:
                    return call
                code, trailing = failure
                delay = self.delay_before(method, attempt + 1, code, trailing, deadline)
                if delay is None:
                    return call
            await self.sleep(delay)
            attempt += 1


async def _settle_unary(call: Any) -> tuple[grpc.StatusCode, Any] | None:
    code = await call.code()
    if code is grpc.StatusCode.OK:
        return None
    return code, await call.trailing_metadata()


async def _settle_server_stream(call: Any) -> tuple[grpc.StatusCode, Any] | None:
    # Response headers arrive before any message; a call already over by then failed
    # (or finished) before the caller could have seen a response, so repeating it is safe.
    await call.initial_metadata()
    if not call.done():
        return None
    code = await call.code()
    if code is grpc.StatusCode.OK:
        return None
    return code, await call.trailing_metadata()


class _Retrying:
    def __init__(self, retrier: Retrier) -> None:
        self._retrier = retrier


class _UnaryUnary(_Retrying, UnaryUnaryClientInterceptorBase):
    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        if not self._retrier.applies(client_call_details, request):
            return await continuation(client_call_details, request)
        return await self._retrier.run(continuation, client_call_details, request, _settle_unary)


class _UnaryStream(_Retrying, UnaryStreamClientInterceptorBase):
    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        if not self._retrier.applies(client_call_details, request):
            return await continuation(client_call_details, request)
        return await self._retrier.run(continuation, client_call_details, request, _settle_server_stream)


def retry_interceptors(
    policy: RetryPolicy | None = None,
    *,
    breakers: CircuitBreaker | BreakerSet | None = None,
    pool: DescriptorPool | None = None,
    rng: random.Random | None = None,
    sleep: Callable[[float], Any] = asyncio.sleep,
    retrier: Retrier | None = None,
) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors retrying idempotent unary and server-streaming calls on one channel.

    Pass the channel's ``breakers`` (the same ones its breaker interceptors use) to stop
    retrying as soon as the target's circuit opens, or a ready ``retrier``. Two objects,
    because grpc.aio files an interceptor under only the first call kind it implements.
    """
    if retrier is None:
        retrier = Retrier(policy, breakers=breakers, pool=pool, rng=rng, sleep=sleep)
    # grpc-stubs types channel interceptors as an opaque placeholder, hence the cast.
    return cast(list[grpc.aio.ClientInterceptor], [_UnaryUnary(retrier), _UnaryStream(retrier)])
