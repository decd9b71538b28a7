"""A scriptable test service (``agentmesh.test.Probe``) and a helper that serves it on loopback.

Requests are ``StringValue`` commands, so the tests need no generated code:
``ok:TEXT`` answers ``TEXT#N`` (N counts handler runs), ``abort:CODE`` aborts with a
BadRequest detail, ``setcode:CODE`` sets the code and returns, ``crash`` raises,
``gate`` waits for :attr:`Probe.gate`, ``sleep:SECONDS`` sleeps, ``slow:TEXT`` is ``ok`` after 0.2 s.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import grpc
import grpc.aio
from google.protobuf import any_pb2
from google.protobuf.wrappers_pb2 import StringValue
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

SERVICE = "agentmesh.test.Probe"
DO = f"/{SERVICE}/Do"
STREAM = f"/{SERVICE}/Stream"
COLLECT = f"/{SERVICE}/Collect"
CHAT = f"/{SERVICE}/Chat"
WRITES = f"/{SERVICE}/Writes"


def bad_request_status(code: grpc.StatusCode, message: str) -> grpc.Status:
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.BadRequest(
            field_violations=[error_details_pb2.BadRequest.FieldViolation(field="value", description=message)]
        )
    )
    return rpc_status.to_status(status_pb2.Status(code=code.value[0], message=message, details=[detail]))


class Probe:
    """Handlers that do what the request says, counting how often each command ran."""

    def __init__(self) -> None:
        self.runs: Counter[str] = Counter()
        self.gate = asyncio.Event()
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.seen: list[dict[str, Any]] = []
        self.hook: Any = None

    async def _act(self, command: str, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        self.runs[command] += 1
        if self.hook is not None:
            await self.hook(command, context)
        verb, _, arg = command.partition(":")
        if verb == "ok":
            return f"{arg}#{self.runs[command]}"
        if verb == "abort":
            status = bad_request_status(grpc.StatusCode[arg], f"probe aborted with {arg}")
            await context.abort(status.code, status.details, status.trailing_metadata)
        if verb == "setcode":
            context.set_code(grpc.StatusCode[arg])
            context.set_details(f"probe set {arg}")
            context.set_trailing_metadata((("probe-trailer", "yes"),))
            return ""
        if verb == "crash":
            raise RuntimeError("secret internal detail")
        if verb == "gate":
            self.started.set()
            try:
                await self.gate.wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
            return f"gate#{self.runs[command]}"
        if verb == "slow":
            await asyncio.sleep(0.2)
            return f"{arg}#{self.runs[command]}"
        if verb == "sleep":
            await asyncio.sleep(float(arg))
            return "slept"
        if verb == "block":
            time.sleep(float(arg))  # noqa: ASYNC251 - blocks on purpose: nothing can cancel it
            return "blocked"
        raise ValueError(f"unknown probe command {command!r}")

    async def do(self, request: StringValue, context: grpc.aio.ServicerContext[Any, Any]) -> StringValue:
        return StringValue(value=await self._act(request.value, context))

    async def stream(
        self, request: StringValue, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[StringValue]:
        # "N" streams N messages; "N:command" streams N then runs the command.
        count, _, then = request.value.partition(":")
        for index in range(int(count)):
            yield StringValue(value=str(index))
            await asyncio.sleep(0)
        if then:
            yield StringValue(value=await self._act(then, context))

    async def writes(self, request: StringValue, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        for index in range(int(request.value)):
            await context.write(StringValue(value=str(index)))

    async def collect(
        self, requests: AsyncIterator[StringValue], context: grpc.aio.ServicerContext[Any, Any]
    ) -> StringValue:
        values = [request.value async for request in requests]
        if values and values[-1] != "" and not values[-1][0].isdigit():
            await self._act(values[-1], context)
        return StringValue(value=",".join(values))

    async def chat(
        self, requests: AsyncIterator[StringValue], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[StringValue]:
        async for request in requests:
            if request.value and not request.value[0].isdigit():
                yield StringValue(value=await self._act(request.value, context))
            else:
                yield StringValue(value=request.value)

    def handlers(self) -> grpc.GenericRpcHandler[Any, Any]:
        def codec(kind: Any, behavior: Any) -> Any:
            return kind(
                behavior,
                request_deserializer=StringValue.FromString,
                response_serializer=StringValue.SerializeToString,
            )

        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Do": codec(grpc.unary_unary_rpc_method_handler, self.do),
                "Stream": codec(grpc.unary_stream_rpc_method_handler, self.stream),
                "Writes": codec(grpc.unary_stream_rpc_method_handler, self.writes),
                "Collect": codec(grpc.stream_unary_rpc_method_handler, self.collect),
                "Chat": codec(grpc.stream_stream_rpc_method_handler, self.chat),
            },
        )


class ProbeClient:
    """Typed callables for the probe's methods on one channel."""

    def __init__(self, channel: grpc.aio.Channel, target: str = "") -> None:
        self.channel = channel
        self.target = target
        ser, de = StringValue.SerializeToString, StringValue.FromString
        self.do = channel.unary_unary(DO, request_serializer=ser, response_deserializer=de)
        self.stream = channel.unary_stream(STREAM, request_serializer=ser, response_deserializer=de)
        self.writes = channel.unary_stream(WRITES, request_serializer=ser, response_deserializer=de)
        self.collect = channel.stream_unary(COLLECT, request_serializer=ser, response_deserializer=de)
        self.chat = channel.stream_stream(CHAT, request_serializer=ser, response_deserializer=de)


@asynccontextmanager
async def serve(
    probe: Probe, interceptors: Sequence[Any] = (), client_interceptors: Sequence[Any] = ()
) -> AsyncIterator[ProbeClient]:
    """Serve ``probe`` behind ``interceptors`` on a free loopback port; yield a client for it."""
    server = grpc.aio.server(interceptors=list(interceptors))
    server.add_generic_rpc_handlers((probe.handlers(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        target = f"127.0.0.1:{port}"
        async with grpc.aio.insecure_channel(target, interceptors=list(client_interceptors) or None) as channel:
            yield ProbeClient(channel, target)
    finally:
        await server.stop(None)


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait (10 s at most) until ``condition()`` holds: an aborted call's status reaches the client
    before the server's interceptors finish unwinding, so their effects (log lines, metrics) come
    a moment later, with no event to wait on."""
    async with asyncio.timeout(10):
        while not condition():  # noqa: ASYNC110 - the state belongs to the server under test
            await asyncio.sleep(0.01)


def sv(value: str) -> StringValue:
    return StringValue(value=value)
