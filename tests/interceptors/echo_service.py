"""A tiny service with all four RPC kinds, for exercising interceptors against real servers.

Built from generic handlers and ``StringValue`` so interceptor tests need no generated
code. Each reply names the caller (``current_caller``) so tests can see what auth set.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
import grpc.aio
from google.protobuf.wrappers_pb2 import StringValue
from google.rpc import error_details_pb2
from grpc_health.v1 import health, health_pb2_grpc

from interceptors._typing import ServerInterceptorBase
from interceptors.identity import current_caller
from rpcstatus.details import find_detail

SERVICE = "test.v1.Echo"
UNARY = f"/{SERVICE}/Unary"
SERVER_STREAM = f"/{SERVICE}/ServerStream"
CLIENT_STREAM = f"/{SERVICE}/ClientStream"
BIDI = f"/{SERVICE}/Bidi"
OTHER_SERVICE = "test.v1.Other"
OTHER = f"/{OTHER_SERVICE}/Call"


def _who() -> str:
    caller = current_caller.get()
    return f"{caller.subject}|{caller.peer_identity or '-'}"


@dataclass
class Echo:
    """Handlers plus knobs tests turn: a status to fail with, and counters."""

    calls: dict[str, int] = field(default_factory=dict)
    # Codes to fail with, consumed one per call (then succeed).
    fail_with: list[grpc.StatusCode] = field(default_factory=list)
    trailing_on_failure: Sequence[tuple[str, str | bytes]] = ()
    seen_metadata: list[dict[str, str]] = field(default_factory=list)
    seen_time_remaining: list[float | None] = field(default_factory=list)
    # Server streams fail with this code after their first message (once), when set,
    # as soon as ``mid_stream`` is set (so a test decides when the failure happens).
    fail_mid_stream: grpc.StatusCode | None = None
    mid_stream: asyncio.Event = field(default_factory=asyncio.Event)
    # Set to block calls until released (for hanging-backend tests).
    gate: asyncio.Event | None = None
    # Response headers every call sends before anything else, when set.
    headers: Sequence[tuple[str, str]] = ()

    async def _enter(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.calls[method] = self.calls.get(method, 0) + 1
        self.seen_metadata.append({k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)})
        self.seen_time_remaining.append(context.time_remaining())
        if self.headers:
            await context.send_initial_metadata(tuple(self.headers))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_with:
            code = self.fail_with.pop(0)
            await context.abort(code, f"told to fail with {code.name}", tuple(self.trailing_on_failure))

    async def unary(self, request: StringValue, context: grpc.aio.ServicerContext[Any, Any]) -> StringValue:
        await self._enter("Unary", context)
        return StringValue(value=f"{_who()}:{request.value}")

    async def server_stream(
        self, request: StringValue, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[StringValue]:
        await self._enter("ServerStream", context)
        for i in range(3):
            yield StringValue(value=f"{_who()}:{request.value}:{i}")
            if self.fail_mid_stream is not None:
                code, self.fail_mid_stream = self.fail_mid_stream, None
                await self.mid_stream.wait()
                await context.abort(code, f"told to fail mid-stream with {code.name}")

    async def client_stream(
        self, requests: AsyncIterator[StringValue], context: grpc.aio.ServicerContext[Any, Any]
    ) -> StringValue:
        await self._enter("ClientStream", context)
        values = [r.value async for r in requests]
        return StringValue(value=f"{_who()}:{','.join(values)}")

    async def bidi(self, requests: AsyncIterator[StringValue], context: grpc.aio.ServicerContext[Any, Any]) -> None:
        # Writer-API style on purpose: interceptors must keep coroutine behaviours working.
        await self._enter("Bidi", context)
        async for request in requests:
            await context.write(StringValue(value=f"{_who()}:{request.value}"))

    def generic_handlers(self) -> list[grpc.GenericRpcHandler[Any, Any]]:
        ser: Callable[[StringValue], bytes] = StringValue.SerializeToString
        de = StringValue.FromString
        echo = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Unary": grpc.unary_unary_rpc_method_handler(self.unary, de, ser),
                "ServerStream": grpc.unary_stream_rpc_method_handler(self.server_stream, de, ser),
                "ClientStream": grpc.stream_unary_rpc_method_handler(self.client_stream, de, ser),
                "Bidi": grpc.stream_stream_rpc_method_handler(self.bidi, de, ser),
            },
        )
        other = grpc.method_handlers_generic_handler(
            OTHER_SERVICE, {"Call": grpc.unary_unary_rpc_method_handler(self.unary, de, ser)}
        )
        return [echo, other]


async def start_server(
    echo: Echo,
    *,
    interceptors: Sequence[ServerInterceptorBase] = (),
    server_credentials: grpc.ServerCredentials | None = None,
    port: int = 0,
) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(interceptors=list(interceptors))
    server.add_generic_rpc_handlers(echo.generic_handlers())
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = f"127.0.0.1:{port}"
    if server_credentials is None:
        bound = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, server_credentials)
    await server.start()
    return server, bound


class EchoClient:
    """Callables for the four methods on one channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        ser = StringValue.SerializeToString
        de = StringValue.FromString
        self.unary = channel.unary_unary(UNARY, request_serializer=ser, response_deserializer=de)
        self.server_stream = channel.unary_stream(SERVER_STREAM, request_serializer=ser, response_deserializer=de)
        self.client_stream = channel.stream_unary(CLIENT_STREAM, request_serializer=ser, response_deserializer=de)
        self.bidi = channel.stream_stream(BIDI, request_serializer=ser, response_deserializer=de)
        self.other = channel.unary_unary(OTHER, request_serializer=ser, response_deserializer=de)


def open_channel(port: int, *interceptors: object) -> grpc.aio.Channel:
    """A plaintext loopback channel through ``interceptors`` (grpc-stubs types these opaquely)."""
    return grpc.aio.insecure_channel(f"127.0.0.1:{port}", interceptors=cast(Any, list(interceptors)))


@asynccontextmanager
async def serving() -> AsyncIterator[Callable[..., Awaitable[tuple[Echo, int]]]]:
    """A factory starting echo servers (``await start(interceptors=[...])``), all stopped on exit."""
    servers: list[grpc.aio.Server] = []

    async def start(*, echo: Echo | None = None, **options: Any) -> tuple[Echo, int]:
        echo = echo or Echo()
        server, port = await start_server(echo, **options)
        servers.append(server)
        return echo, port

    try:
        yield start
    finally:
        for server in servers:
            await server.stop(None)


def error_reason(error: grpc.aio.AioRpcError) -> str | None:
    """The ErrorInfo reason of an error's AIP-193 details, if it has one."""
    info = find_detail(error, error_details_pb2.ErrorInfo)
    return None if info is None else str(info.reason)


async def requests_of(*values: str) -> AsyncIterator[StringValue]:
    for value in values:
        yield StringValue(value=value)
