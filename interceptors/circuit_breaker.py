"""A circuit breaker per target, as a grpc.aio client interceptor for all four call kinds.

States::

    closed --(N consecutive failures, or failure rate >= R over >= M calls in the window)--> open
    open --(open_seconds elapse)--> half_open
    half_open --(half_open_probes probes succeed)--> closed
    half_open --(any probe fails)--> open

Only the configured codes count as failures (UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL by
default): a NOT_FOUND or PERMISSION_DENIED proves the backend is up and answering. A
call the client itself cancelled counts neither way.

While open, and in half-open once every probe slot is taken, calls fail at once with
UNAVAILABLE, ``ErrorInfo`` reason ``CIRCUIT_OPEN`` and a ``RetryInfo`` for when probing
starts; nothing is sent, nothing waits. State changes are logged and reported to an
optional ``on_state_change(target, old, new)`` callback (the metrics gauge plugs in
there, so this module imports no metrics code).

Why not a library: pybreaker, aiobreaker and purgatory all trip on a consecutive-failure
count only (no failure rate over a rolling window), classify failures by exception
type, and wrap a single awaitable; purgatory also makes every check an ``await`` on a
storage unit-of-work. A gRPC streaming call's outcome arrives later, through the call's
done callback, and its failure is a status code, so the fit is poor either way. The
state machine here is small, synchronous, and tested on its own with a fake clock.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import grpc
import grpc.aio
import structlog
from pydantic import BaseModel, ConfigDict, Field, field_validator

from interceptors._typing import (
    StreamStreamClientInterceptorBase,
    StreamUnaryClientInterceptorBase,
    UnaryStreamClientInterceptorBase,
    UnaryUnaryClientInterceptorBase,
)
from rpcstatus.codes import code_set, error_code_names
from rpcstatus.details import client_error, error_status
from rpcstatus.errors import error_info, retry_info

CIRCUIT_OPEN = "CIRCUIT_OPEN"


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


DEFAULT_FAILURE_CODES = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL")


class BreakerPolicy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # grpc.StatusCode names that count as failures.
    failure_codes: tuple[str, ...] = DEFAULT_FAILURE_CODES
    consecutive_failures: int = Field(default=5, ge=1)
    failure_rate: float = Field(default=0.5, gt=0, le=1)
    # The rate only counts once the window holds this many calls.
    minimum_calls: int = Field(default=20, ge=1)
    window_seconds: float = Field(default=10.0, gt=0)
    open_seconds: float = Field(default=5.0, gt=0)
    # Probes let through at once in half-open; all must succeed to close.
    half_open_probes: int = Field(default=1, ge=1)

    @field_validator("failure_codes")
    @classmethod
    def _known_codes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return error_code_names(value)


StateListener = Callable[[str, BreakerState, BreakerState], None]

_WINDOW_BUCKETS = 10
_OK = grpc.StatusCode.OK


@dataclass(frozen=True, slots=True)
class Permit:
    """Leave to make one call; hand it back with the call's outcome."""

    generation: int
    probe: bool


class CircuitBreaker:
    """The state machine for one target. Synchronous: everything runs on the event loop thread."""

    def __init__(
        self,
        target: str,
        policy: BreakerPolicy | None = None,
        *,
        on_state_change: StateListener | None = None,
        clock: Callable[[], float] = time.monotonic,
        logger: Any | None = None,
    ) -> None:
        self.target = target
        self._policy = policy = policy or BreakerPolicy()
        self._failure_codes = code_set(policy.failure_codes)
        self._on_state_change = on_state_change
        self._clock = clock
        self._log = logger if logger is not None else structlog.get_logger("agentmesh.breaker")
        self._state = BreakerState.CLOSED
        # Bumped on every transition, so outcomes of calls admitted under an earlier
        # state cannot move the current one (a slow pre-open failure must not re-open).
        self._generation = 0
        # Every call admitted while CLOSED gets the same permit (a frozen dataclass costs a
        # Python-level constructor per call); a new generation makes a new one.
        self._closed_permit = Permit(0, probe=False)
        self._opened_at = 0.0
        self._consecutive = 0
        self._probes_in_flight = 0
        self._probe_successes = 0
        self._bucket_width = policy.window_seconds / _WINDOW_BUCKETS
        self._bucket_ids = [-1] * _WINDOW_BUCKETS
        self._totals = [0] * _WINDOW_BUCKETS
        self._failures = [0] * _WINDOW_BUCKETS

    def reconfigure(self, policy: BreakerPolicy) -> None:
        """Apply new thresholds while serving (live config). The state is kept; a new window
        length restarts the failure-rate window, since old buckets would not line up."""
        window_changed = policy.window_seconds != self._policy.window_seconds
        self._policy = policy
        self._failure_codes = code_set(policy.failure_codes)
        if window_changed:
            self._bucket_width = policy.window_seconds / _WINDOW_BUCKETS
            self._bucket_ids = [-1] * _WINDOW_BUCKETS
            self._totals = [0] * _WINDOW_BUCKETS
            self._failures = [0] * _WINDOW_BUCKETS

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self._policy.open_seconds:
            self._transition(BreakerState.HALF_OPEN)
        return self._state

    def retry_after(self) -> float:
        """Seconds until the breaker lets probes through (0 when it does now)."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self._policy.open_seconds - self._clock())

    def acquire(self) -> Permit | None:
        """A permit to call now, or None to fail fast."""
        state = self.state
        if state is BreakerState.CLOSED:
            return self._closed_permit
        if state is BreakerState.HALF_OPEN and self._probes_in_flight < self._policy.half_open_probes:
            self._probes_in_flight += 1
            return Permit(self._generation, probe=True)
        return None

    def release(self, permit: Permit) -> None:
        """The call ended without telling anything about the target (cancelled by us)."""
        if permit.probe and permit.generation == self._generation:
            self._probes_in_flight -= 1

    def record(self, permit: Permit, code: grpc.StatusCode) -> None:
        # OK first: an Enum hashes in Python, and nearly every call is OK.
        failed = code is not _OK and code in self._failure_codes
        if permit.generation != self._generation:
            return
        if permit.probe:
            self._probes_in_flight -= 1
            if failed:
                self._open()
                return
            self._probe_successes += 1
            if self._probe_successes >= self._policy.half_open_probes:
                self._transition(BreakerState.CLOSED)
            return
        total, failures = self._count(failed)
        if not failed:
            self._consecutive = 0
            return
        self._consecutive += 1
        policy = self._policy
        if self._consecutive >= policy.consecutive_failures or (
            total >= policy.minimum_calls and failures >= policy.failure_rate * total
        ):
            self._open()

    def _count(self, failed: bool) -> tuple[int, int]:
        """Add one outcome to the rolling window; return the window's (calls, failures)."""
        bucket_id = int(self._clock() / self._bucket_width)
        slot = bucket_id % _WINDOW_BUCKETS
        if self._bucket_ids[slot] != bucket_id:
            self._bucket_ids[slot] = bucket_id
            self._totals[slot] = 0
            self._failures[slot] = 0
        self._totals[slot] += 1
        if failed:
            self._failures[slot] += 1
        else:
            return 0, 0  # successes never open the breaker; skip the sums
        oldest = bucket_id - _WINDOW_BUCKETS + 1
        total = failures = 0
        for i in range(_WINDOW_BUCKETS):
            if self._bucket_ids[i] >= oldest:
                total += self._totals[i]
                failures += self._failures[i]
        return total, failures

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._transition(BreakerState.OPEN)

    def _transition(self, new: BreakerState) -> None:
        old = self._state
        self._state = new
        self._generation += 1
        self._closed_permit = Permit(self._generation, probe=False)
        self._probes_in_flight = 0
        self._probe_successes = 0
        if new is BreakerState.CLOSED:
            self._consecutive = 0
            self._bucket_ids = [-1] * _WINDOW_BUCKETS
        if old is new:
            return  # half_open -> open -> ... re-opening restarts the timer only
        log = self._log.warning if new is BreakerState.OPEN else self._log.info
        log("circuit breaker state changed", target=self.target, old=str(old), new=str(new))
        if self._on_state_change is not None:
            self._on_state_change(self.target, old, new)

    def open_error(self) -> grpc.aio.AioRpcError:
        retry_after = self.retry_after()
        probing = self._state is BreakerState.HALF_OPEN
        message = (
            f"circuit to {self.target} is half-open and its probe calls are in flight; failing fast"
            if probing
            else f"circuit to {self.target} is open after repeated failures; failing fast for {retry_after:.1f}s more"
        )
        return client_error(
            error_status(
                grpc.StatusCode.UNAVAILABLE,
                message,
                error_info(CIRCUIT_OPEN, target=self.target, state=str(self._state)),
                retry_info(max(retry_after, 0.001)),
            )
        )


class BreakerSet:
    """One breaker per target for a channel factory whose interceptors serve several targets.

    ``target_of`` maps a full method name to its target (the gateway maps a service to
    the backend its route names), so one interceptor list still keeps a breaker per
    backend. Breakers are created on first use and kept per method name.
    """

    def __init__(
        self,
        policy: BreakerPolicy | None = None,
        *,
        target_of: Callable[[str], str],
        on_state_change: StateListener | None = None,
        clock: Callable[[], float] = time.monotonic,
        logger: Any | None = None,
    ) -> None:
        self._policy = policy or BreakerPolicy()
        self._target_of = target_of
        self._options: dict[str, Any] = {"on_state_change": on_state_change, "clock": clock, "logger": logger}
        self._by_target: dict[str, CircuitBreaker] = {}
        self._by_method: dict[str, CircuitBreaker] = {}

    @property
    def policy(self) -> BreakerPolicy:
        return self._policy

    def reconfigure(self, policy: BreakerPolicy) -> None:
        """New thresholds for every breaker, existing and future (live config)."""
        self._policy = policy
        for breaker in self._by_target.values():
            breaker.reconfigure(policy)

    def get(self, target: str) -> CircuitBreaker:
        breaker = self._by_target.get(target)
        if breaker is None:
            breaker = self._by_target[target] = CircuitBreaker(target, self._policy, **self._options)
            listener = self._options["on_state_change"]
            if listener is not None:
                # Reported from the start, so a dashboard shows every breaker closed, not only tripped ones.
                listener(target, breaker.state, breaker.state)
        return breaker

    def for_method(self, method: str) -> CircuitBreaker:
        breaker = self._by_method.get(method)
        if breaker is None:
            breaker = self._by_method[method] = self.get(self._target_of(method))
        return breaker


def breaker_lookup(breakers: CircuitBreaker | BreakerSet) -> Callable[[str], CircuitBreaker]:
    """``method -> breaker`` for either one breaker (one target) or a set of them."""
    if isinstance(breakers, BreakerSet):
        return breakers.for_method
    return lambda _method: breakers


def _method_of(details: Any) -> str:
    method = details.method
    return method.decode() if isinstance(method, bytes) else str(method)


class _Guard:
    """What the four per-kind interceptors share: the breakers and the outcome bookkeeping."""

    def __init__(self, breakers: CircuitBreaker | BreakerSet) -> None:
        self._breaker_for = breaker_lookup(breakers)
        # Done callbacks schedule a task to read the final code; keep them referenced.
        self._pending: set[asyncio.Task[None]] = set()

    async def unary_response(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        breaker = self._breaker_for(_method_of(details))
        permit = breaker.acquire()
        if permit is None:
            raise breaker.open_error()
        try:
            call = await continuation(details, request)
            code = await call.code()
        except grpc.aio.AioRpcError as error:
            breaker.record(permit, error.code())
            raise
        except asyncio.CancelledError:
            breaker.release(permit)
            raise
        if code is grpc.StatusCode.CANCELLED:
            breaker.release(permit)
        else:
            breaker.record(permit, code)
        return call

    async def streaming(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        breaker = self._breaker_for(_method_of(details))
        permit = breaker.acquire()
        if permit is None:
            raise breaker.open_error()
        try:
            call = await continuation(details, request)
        except grpc.aio.AioRpcError as error:
            breaker.record(permit, error.code())
            raise
        except asyncio.CancelledError:
            breaker.release(permit)
            raise
        # The callback's argument is grpc's internal call object, so use the one we hold.
        call.add_done_callback(lambda _done: self._settle(breaker, permit, call))
        return call

    def _settle(self, breaker: CircuitBreaker, permit: Permit, call: Any) -> None:
        if call.cancelled():
            breaker.release(permit)
            return
        task = asyncio.get_running_loop().create_task(self._record_final_code(breaker, permit, call))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    @staticmethod
    async def _record_final_code(breaker: CircuitBreaker, permit: Permit, call: Any) -> None:
        # The call is done, so this await returns at once; the status is only exposed async.
        code = await call.code()
        if code is grpc.StatusCode.CANCELLED:
            breaker.release(permit)
        else:
            breaker.record(permit, code)


class _Guarded:
    def __init__(self, guard: _Guard) -> None:
        self._guard = guard


class _UnaryUnary(_Guarded, UnaryUnaryClientInterceptorBase):
    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        # Awaiting the outcome here costs nothing: the caller awaits the same response.
        return await self._guard.unary_response(continuation, client_call_details, request)


class _UnaryStream(_Guarded, UnaryStreamClientInterceptorBase):
    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await self._guard.streaming(continuation, client_call_details, request)


class _StreamUnary(_Guarded, StreamUnaryClientInterceptorBase):
    async def intercept_stream_unary(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        # Recorded from the done callback: awaiting here would stall a request stream
        # that the caller feeds through call.write() only after this returns.
        return await self._guard.streaming(continuation, client_call_details, request_iterator)


class _StreamStream(_Guarded, StreamStreamClientInterceptorBase):
    async def intercept_stream_stream(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return await self._guard.streaming(continuation, client_call_details, request_iterator)


def circuit_breaker_interceptors(breakers: CircuitBreaker | BreakerSet) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors guarding every call kind: with one breaker (one channel, one target) or a set.

    Four objects, not one: grpc.aio's channel files each interceptor under the first
    call kind it implements (an if/elif over isinstance), so an object implementing all
    four would only ever see unary-unary calls.
    """
    guard = _Guard(breakers)
    # grpc-stubs types channel interceptors as an opaque placeholder, hence the cast.
    return cast(
        list[grpc.aio.ClientInterceptor],
        [_UnaryUnary(guard), _UnaryStream(guard), _StreamUnary(guard), _StreamStream(guard)],
    )
