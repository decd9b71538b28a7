"""Forward calls to backends as raw bytes: no deserialization, all four streaming shapes.

Per call the gateway does a route lookup, copies the caller's metadata (minus transport
headers), passes on the caller's remaining deadline, and relays the backend's messages, status,
details and trailers unchanged, so error details (AIP-193) and trailers such as
`idempotency-replayed` reach the client exactly as the backend sent them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import structlog

from runtime.upstreams import Upstreams
from services.gateway.routing import Route

log = structlog.get_logger(__name__)

Context = grpc.aio.ServicerContext[bytes, bytes]
Metadata = tuple[tuple[str, str | bytes], ...]

# Transport-level headers belong to each hop; grpc sets its own on the outgoing call.
_HOP_HEADERS = frozenset({"content-type", "user-agent", "te", "host", "content-length", "accept-encoding"})


def forwarded_metadata(context: Context) -> Metadata:
    return tuple(
        (key, value)
        for key, value in context.invocation_metadata() or ()
        if key not in _HOP_HEADERS and not key.startswith((":", "grpc-"))
    )


class _Relay:
    """Callables for one route; the multicallable is rebuilt only when the channel changes."""

    __slots__ = ("_callable", "_channel", "_upstreams", "route")

    def __init__(self, route: Route, upstreams: Upstreams) -> None:
        self.route = route
        self._upstreams = upstreams
        self._channel: grpc.aio.Channel | None = None
        self._callable: Any = None

    def multicallable(self) -> Any:
        channel = self._upstreams.channel(self.route.backend)
        if channel is not self._channel:
            factory: Callable[..., Any] = {
                (False, False): channel.unary_unary,
                (False, True): channel.unary_stream,
                (True, False): channel.stream_unary,
                (True, True): channel.stream_stream,
            }[(self.route.client_streaming, self.route.server_streaming)]
            # No serializers: requests and responses stay bytes end to end. Registered, as generated
            # stubs do, so grpc core resolves the method path once per channel rather than per call.
            self._callable = factory(self.route.method, _registered_method=True)
            self._channel = channel
        return self._callable


async def _relay_error(context: Context, error: grpc.aio.AioRpcError) -> None:
    await context.abort(error.code(), error.details() or "", tuple(error.trailing_metadata()))  # type: ignore[arg-type]


def make_handler(route: Route, upstreams: Upstreams) -> grpc.RpcMethodHandler[Any, Any]:
    relay = _Relay(route, upstreams)

    async def unary_unary(request: bytes, context: Context) -> bytes:
        call = relay.multicallable()(request, timeout=context.time_remaining(), metadata=forwarded_metadata(context))
        try:
            response: bytes = await call
        except grpc.aio.AioRpcError as error:
            await _relay_error(context, error)
            raise
        context.set_trailing_metadata(await call.trailing_metadata())
        return response

    async def unary_stream(request: bytes, context: Context) -> AsyncIterator[bytes]:
        call = relay.multicallable()(request, timeout=context.time_remaining(), metadata=forwarded_metadata(context))
        try:
            await context.send_initial_metadata(await call.initial_metadata())
            async for message in call:
                yield message
            context.set_trailing_metadata(await call.trailing_metadata())
        except grpc.aio.AioRpcError as error:
            await _relay_error(context, error)
        finally:
            call.cancel()  # no-op once finished; stops the backend if our caller went away

    async def stream_unary(request_iterator: AsyncIterator[bytes], context: Context) -> bytes:
        call = relay.multicallable()(
            request_iterator, timeout=context.time_remaining(), metadata=forwarded_metadata(context)
        )
        try:
            response: bytes = await call
        except grpc.aio.AioRpcError as error:
            await _relay_error(context, error)
            raise
        context.set_trailing_metadata(await call.trailing_metadata())
        return response

    async def stream_stream(request_iterator: AsyncIterator[bytes], context: Context) -> AsyncIterator[bytes]:
        call = relay.multicallable()(
            request_iterator, timeout=context.time_remaining(), metadata=forwarded_metadata(context)
        )
        try:
            await context.send_initial_metadata(await call.initial_metadata())
            async for message in call:
                yield message
            context.set_trailing_metadata(await call.trailing_metadata())
        except grpc.aio.AioRpcError as error:
            await _relay_error(context, error)
        finally:
            call.cancel()

    if route.client_streaming and route.server_streaming:
        return grpc.stream_stream_rpc_method_handler(stream_stream)
    if route.client_streaming:
        return grpc.stream_unary_rpc_method_handler(stream_unary)
    if route.server_streaming:
        return grpc.unary_stream_rpc_method_handler(unary_stream)
    return grpc.unary_unary_rpc_method_handler(unary_unary)


class RoutingHandler(grpc.GenericRpcHandler):  # type: ignore[type-arg]  # generic only in the stubs
    """Finds the handler for a method path; None (UNIMPLEMENTED) for anything not routed."""

    def __init__(self, routes: dict[str, Route], upstreams: Upstreams) -> None:
        self._handlers = {path: make_handler(route, upstreams) for path, route in routes.items()}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        return self._handlers.get(handler_call_details.method)
