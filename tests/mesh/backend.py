"""A stand-in service instance for mesh tests: any gRPC method, standard health, failures on demand.

It answers every unary method with its own name, so a test can count where traffic went.
Behaviour is steered per instance (``fail_next``, ``always_fail``, ``delay``) or per call
with metadata (``x-test-sleep-ms``). With ``certs`` it serves mTLS itself, standing in for
"an instance behind its sidecar"; without, it is the plaintext app behind a real sidecar.
"""

from __future__ import annotations

import asyncio
import functools
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from mesh.certs import CertPaths


@dataclass
class Backend:
    name: str
    certs: CertPaths | None = None
    fail_next: int = 0
    fail_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    always_fail: grpc.StatusCode | None = None
    delay: float = 0.0
    calls: Counter[str] = field(default_factory=Counter)
    last_metadata: dict[str, str] = field(default_factory=dict)
    # Seconds the last call had left when it arrived (None: the caller set no deadline).
    last_deadline: float | None = None
    port: int = 0
    _server: grpc.aio.Server | None = None
    _health: Any = None

    async def start(self) -> Backend:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers([_AnyMethod(self._handle)])
        # grpc-stubs does not describe the asyncio health servicer.
        self._health = cast(Any, health).aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        if self.certs is None:
            self.port = server.add_insecure_port("127.0.0.1:0")
        else:
            credentials = grpc.ssl_server_credentials(
                [(self.certs.key.read_bytes(), self.certs.cert.read_bytes())],
                root_certificates=self.certs.ca.read_bytes(),
                require_client_auth=True,
            )
            self.port = server.add_secure_port("127.0.0.1:0", credentials)
        await server.start()
        self._server = server
        return self

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=None)

    async def set_serving(self, serving: bool) -> None:
        assert self._health is not None
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        await self._health.set("", status)

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    async def _handle(self, method: str, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        self.calls[method] += 1
        self.last_metadata = {key: str(value) for key, value in context.invocation_metadata() or ()}
        self.last_deadline = context.time_remaining()
        sleep_ms = int(self.last_metadata.get("x-test-sleep-ms", "0"))
        if self.delay or sleep_ms:
            await asyncio.sleep(self.delay + sleep_ms / 1000)
        if self.always_fail is not None:
            await context.abort(self.always_fail, f"{self.name} always fails")
        if self.fail_next > 0:
            self.fail_next -= 1
            await context.abort(self.fail_code, f"{self.name} fails on demand")
        return self.name.encode()


Handler = Callable[[str, bytes, "grpc.aio.ServicerContext[bytes, bytes]"], Awaitable[bytes]]


class _AnyMethod(grpc.GenericRpcHandler):
    """Serves every method except health (registered separately) with raw bytes in and out."""

    def __init__(self, handle: Handler) -> None:
        self._handle = handle

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[bytes, bytes] | None:
        method = handler_call_details.method
        if method.startswith("/grpc.health.v1.Health/"):
            return None
        return grpc.unary_unary_rpc_method_handler(functools.partial(self._handle, method))
