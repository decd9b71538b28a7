"""A minimal gRPC service instance for discovery tests: ``grpc.health.v1`` plus ``test.Echo``.

``Echo`` answers with the instance's name, so a test can see which instance served a call;
``Ticks`` streams the name twice, the second time only once ``release`` is set, so a test can
hold a stream open across a change.
Run in-process with ``EchoInstance`` or as a separate process (so a test can SIGKILL it) with
``python -m tests.doubles.echo_instance --name a``, which prints its port on the first line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from typing import Self

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

ECHO_SERVICE = "test.Echo"
ECHO_METHOD = f"/{ECHO_SERVICE}/Echo"
TICKS_METHOD = f"/{ECHO_SERVICE}/Ticks"


class EchoInstance:
    """A grpc.aio server on 127.0.0.1:0 whose Echo returns ``name``."""

    def __init__(self, name: str, *, port: int = 0, credentials: grpc.ServerCredentials | None = None) -> None:
        self.name = name
        self.port = port
        self._credentials = credentials
        self.health = health_aio.HealthServicer()
        self.calls = 0
        self.release = asyncio.Event()
        self._server = grpc.aio.server()

    async def _echo(self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        self.calls += 1
        return self.name.encode()

    async def _ticks(self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> AsyncIterator[bytes]:
        yield self.name.encode()
        await self.release.wait()
        yield self.name.encode()

    async def start(self) -> None:
        handler = grpc.method_handlers_generic_handler(
            ECHO_SERVICE,
            {
                "Echo": grpc.unary_unary_rpc_method_handler(self._echo),
                "Ticks": grpc.unary_stream_rpc_method_handler(self._ticks),
            },
        )
        self._server.add_generic_rpc_handlers((handler,))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        address = f"127.0.0.1:{self.port}"
        if self._credentials is None:
            self.port = self._server.add_insecure_port(address)
        else:
            self.port = self._server.add_secure_port(address, self._credentials)
        await self._server.start()

    async def set_serving(self, serving: bool) -> None:
        response = health_pb2.HealthCheckResponse
        await self.health.set("", response.SERVING if serving else response.NOT_SERVING)

    async def stop(self, grace: float | None = None) -> None:
        await self._server.stop(grace)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


async def _serve(name: str) -> None:
    async with EchoInstance(name) as instance:
        print(instance.port, flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="serve grpc.health.v1 and test.Echo/Echo on 127.0.0.1:0")
    parser.add_argument("--name", required=True)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(parser.parse_args().name))
    sys.exit(0)
