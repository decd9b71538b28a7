"""Forward calls to backends as raw bytes: no deserialization, all four streaming shapes.

Per call the gateway does a route lookup, copies the caller's metadata (minus transport
headers), passes on the caller's remaining deadline, and relays the backend's messages, response
headers, status, details and trailers unchanged, so error details (AIP-193) and trailers such as
`idempotency-replayed` reach the client exactly as the backend sent them.

The forwarded calls go through no grpc.aio client interceptor: with any interceptor on a channel
grpc.aio runs every call through its interceptor machinery (one more task and several awaited
layers per call). What the client chain would do instead runs here, in one place per call shape,
from the same plain policy objects the agent's interceptors wrap:

* trace context: the next hop's ``traceparent`` (and a CLIENT span when the call records), from
  `interceptors.tracing.OutgoingTrace`;
* deadline: the caller's remaining budget less the margin (`interceptors.deadline.DeadlineBudget`);
* retries of methods the protos mark idempotent, or calls carrying an idempotency key, honouring
  ``RetryInfo`` and stopping at an open breaker (`interceptors.retry.Retrier`); client-streaming
  calls are never retried, server-streaming ones only when they failed before their headers;
* the backend's circuit breaker (`interceptors.circuit_breaker.BreakerSet`), every attempt counted.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
import structlog

from interceptors.circuit_breaker import BreakerSet, CircuitBreaker, Permit
from interceptors.deadline import DeadlineBudget
from interceptors.outcome import request_metadata
from interceptors.retry import Retrier
from interceptors.tracing import OutgoingTrace
from runtime.bootstrap import ServiceBinding
from runtime.discovery.upstreams import Upstreams
from services.gateway.routing import Route

log = structlog.get_logger(__name__)

Context = grpc.aio.ServicerContext[bytes, bytes]
Metadata = list[tuple[str, str | bytes]]

# Transport-level headers belong to each hop; grpc sets its own on the outgoing call.
_HOP_HEADERS = frozenset({"content-type", "user-agent", "te", "host", "content-length", "accept-encoding"})
_OK = grpc.StatusCode.OK
_CANCELLED = grpc.StatusCode.CANCELLED


def forwarded_metadata(context: Context, replaced: Iterable[tuple[str, str]] = ()) -> Metadata:
    """The caller's metadata for the next hop, with ``replaced`` headers (trace context) put in."""
    replaced = list(replaced)
    skip = _HOP_HEADERS.union(key for key, _ in replaced) if replaced else _HOP_HEADERS
    metadata: Metadata = [
        (key, value)
        # Read once per call and shared with the chain (tracing and auth read it first): each
        # invocation_metadata() builds the tuple anew, about a fifth of the chain's own work.
        for key, value in request_metadata(context) or ()
        if key not in skip and not key.startswith((":", "grpc-"))
    ]
    metadata.extend(replaced)
    return metadata


@dataclass(frozen=True)
class Forwarding:
    """The policies every forwarded call runs under (built once by the gateway's `build`)."""

    upstreams: Upstreams
    breakers: BreakerSet
    retrier: Retrier
    trace: OutgoingTrace
    budget: DeadlineBudget


class _Relay:
    """One route: its breaker, whether it may be retried, and multicallables cached per channel."""

    __slots__ = ("_callables", "_factory", "_forwarding", "breaker", "budget", "method", "retrier", "route", "safe")

    def __init__(self, route: Route, forwarding: Forwarding) -> None:
        self.route = route
        self.method = route.method
        self._forwarding = forwarding
        self.budget = forwarding.budget
        self.retrier = forwarding.retrier
        self.breaker: CircuitBreaker = forwarding.breakers.for_method(route.method)
        self.safe = forwarding.retrier.method_is_safe(route.method)
        self._factory: Callable[[grpc.aio.Channel], Any] = {
            (False, False): lambda channel: channel.unary_unary,
            (False, True): lambda channel: channel.unary_stream,
            (True, False): lambda channel: channel.stream_unary,
            (True, True): lambda channel: channel.stream_stream,
        }[(route.client_streaming, route.server_streaming)]
        # Keyed by channel: a version split picks one of several per call.
        self._callables: dict[grpc.aio.Channel, Any] = {}

    def start(self, request: Any, timeout: float | None, metadata: Metadata) -> Any:
        channel = self._forwarding.upstreams.channel(self.route.backend)
        multicallable = self._callables.get(channel)
        if multicallable is None:
            # No serializers: requests and responses stay bytes end to end. Registered, as generated
            # stubs do, so grpc core resolves the method path once per channel rather than per call.
            multicallable = self._callables[channel] = self._factory(channel)(self.method, _registered_method=True)
        return multicallable(request, timeout=timeout, metadata=metadata)

    def first_attempt(
        self, context: Context, trace_headers: Iterable[tuple[str, str]], *, retry: bool
    ) -> tuple[Metadata, float | None, bool, float | None]:
        """The first attempt's metadata and timeout, whether the call may be retried (the route
        allows it and the call is safe to repeat), and the deadline all attempts share."""
        metadata = forwarded_metadata(context, trace_headers)
        timeout = self.budget.timeout(self.method, context.time_remaining())
        retry = retry and (self.safe or self.retrier.call_is_safe(self.method, None, metadata))
        return metadata, timeout, retry, _deadline_of(timeout) if retry else None

    async def next_attempt(
        self, attempt: int, metadata: Metadata, delay: float, deadline: float | None
    ) -> tuple[Metadata, float | None]:
        """After waiting ``delay``: attempt number ``attempt``'s metadata (its attempt header) and timeout."""
        await self.retrier.sleep(delay)
        return Retrier.attempt_metadata(metadata, attempt), _left(deadline)

    def permit(self) -> Permit:
        permit = self.breaker.acquire()
        if permit is None:
            raise self.breaker.open_error()
        return permit

    def settle(self, permit: Permit, code: grpc.StatusCode) -> None:
        # A call cancelled (by us, for our caller) says nothing about the backend.
        if code is _CANCELLED:
            self.breaker.release(permit)
        else:
            self.breaker.record(permit, code)

    def retry_delay(self, attempt: int, error: grpc.aio.AioRpcError, deadline: float | None) -> float | None:
        return self.retrier.delay_before(self.method, attempt + 1, error.code(), error.trailing_metadata(), deadline)


def _deadline_of(timeout: float | None) -> float | None:
    return None if timeout is None else asyncio.get_running_loop().time() + timeout


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - asyncio.get_running_loop().time())


async def _relay_headers(context: Context, headers: Any) -> None:
    # Only when the backend sent any: an empty header block costs one more write per call.
    if headers:
        await context.send_initial_metadata(tuple(headers))


async def _relay_error(context: Context, error: grpc.aio.AioRpcError, *, headers_sent: bool = False) -> None:
    if not headers_sent:
        await _relay_headers(context, error.initial_metadata())
    await context.abort(error.code(), error.details() or "", tuple(error.trailing_metadata()))  # type: ignore[arg-type]


async def _stream_error(call: Any) -> grpc.aio.AioRpcError:
    """The failure of a finished streaming call, as the error its iteration would raise."""
    return grpc.aio.AioRpcError(
        await call.code(), await call.initial_metadata(), await call.trailing_metadata(), await call.details(), None
    )


def make_handler(route: Route, forwarding: Forwarding) -> grpc.RpcMethodHandler[Any, Any]:
    relay = _Relay(route, forwarding)
    method = route.method
    trace = forwarding.trace

    async def unary_response(request: Any, context: Context, *, retry: bool) -> bytes:
        """Unary and client-streaming calls: the response, headers and trailers relayed."""
        span, trace_headers = trace.start(method)
        code = _OK
        try:
            metadata, timeout, retry, deadline = relay.first_attempt(context, trace_headers, retry=retry)
            attempt = 1
            while True:
                permit = relay.permit()
                try:
                    call = relay.start(request, timeout, metadata)
                    response: bytes = await call
                except grpc.aio.AioRpcError as error:
                    relay.settle(permit, error.code())
                    delay = relay.retry_delay(attempt, error, deadline) if retry else None
                    if delay is None:
                        raise
                except asyncio.CancelledError:
                    relay.breaker.release(permit)
                    raise
                else:
                    relay.breaker.record(permit, _OK)
                    await _relay_headers(context, await call.initial_metadata())
                    context.set_trailing_metadata(await call.trailing_metadata())
                    return response
                attempt += 1
                metadata, timeout = await relay.next_attempt(attempt, metadata, delay, deadline)
        except grpc.aio.AioRpcError as error:
            code = error.code()
            await _relay_error(context, error)
            raise  # abort raised already; keeps the type checker informed
        except asyncio.CancelledError:
            code = _CANCELLED
            raise
        finally:
            trace.end(span, code)

    async def streaming_response(request: Any, context: Context, *, retry: bool) -> AsyncIterator[bytes]:
        """Server- and bidi-streaming calls: headers at once, then every message as it comes."""
        span, trace_headers = trace.start(method)
        code = _OK
        call: Any = None
        permit: Permit | None = None
        headers_sent = False
        try:
            metadata, timeout, retry, deadline = relay.first_attempt(context, trace_headers, retry=retry)
            attempt = 1
            while True:
                permit = relay.permit()
                call = relay.start(request, timeout, metadata)
                headers = await call.initial_metadata()
                if not retry or not call.done() or await call.code() is _OK:
                    break
                # Over before its headers: nothing reached our caller, so repeating it is safe.
                error = await _stream_error(call)
                relay.settle(permit, error.code())
                permit = None
                delay = relay.retry_delay(attempt, error, deadline)
                if delay is None:
                    raise error
                attempt += 1
                metadata, timeout = await relay.next_attempt(attempt, metadata, delay, deadline)
            await context.send_initial_metadata(tuple(headers))
            headers_sent = True
            async for message in call:
                yield message
            context.set_trailing_metadata(await call.trailing_metadata())
            relay.breaker.record(permit, _OK)
            permit = None
        except grpc.aio.AioRpcError as error:
            code = error.code()
            if permit is not None:
                relay.settle(permit, code)
                permit = None
            await _relay_error(context, error, headers_sent=headers_sent)
        except (asyncio.CancelledError, GeneratorExit):
            code = _CANCELLED
            raise
        finally:
            if permit is not None:
                relay.breaker.release(permit)  # our caller went away mid-stream
            if call is not None:
                call.cancel()  # no-op once finished; stops the backend if our caller went away
            trace.end(span, code)

    # Partials rather than wrappers: one coroutine (or generator) per call, and grpc still sees a
    # coroutine / async generator function. Client-streaming calls are never retried: the request
    # stream is consumed as it is sent.
    if route.client_streaming and route.server_streaming:
        return grpc.stream_stream_rpc_method_handler(functools.partial(streaming_response, retry=False))
    if route.client_streaming:
        return grpc.stream_unary_rpc_method_handler(functools.partial(unary_response, retry=False))
    if route.server_streaming:
        return grpc.unary_stream_rpc_method_handler(functools.partial(streaming_response, retry=True))
    return grpc.unary_unary_rpc_method_handler(functools.partial(unary_response, retry=True))


def route_bindings(routes: dict[str, Route], forwarding: Forwarding) -> list[ServiceBinding]:
    """Every routed method as a registered method of its service: the registrar compiles the server
    chain into each once, at start-up, into its method table (one dict lookup per call,
    ``interceptors.layer.MethodTable``). Methods not routed stay UNIMPLEMENTED."""
    by_service: dict[str, dict[str, grpc.RpcMethodHandler[Any, Any]]] = {}
    for path, route in routes.items():
        service, _, name = path.lstrip("/").partition("/")
        by_service.setdefault(service, {})[name] = make_handler(route, forwarding)

    def binding(service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]) -> ServiceBinding:
        def add_to_server(server: grpc.aio.Server) -> None:
            # grpc-stubs lacks add_registered_method_handlers (grpcio 1.62+).
            server.add_registered_method_handlers(service, handlers)  # type: ignore[attr-defined]

        return ServiceBinding(service, add_to_server)

    return [binding(service, handlers) for service, handlers in sorted(by_service.items())]
