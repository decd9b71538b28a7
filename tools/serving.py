"""Wait until a freshly started service reports SERVING — or say why it never will."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


async def wait_serving(
    name: str, address: str, *, exit_code: Callable[[], int | None], within: float = 90.0, poll_s: float = 0.1
) -> None:
    """Poll ``grpc.health.v1`` at ``address`` until SERVING; fail fast if the process has exited.

    The wait is long because a first start on a busy two-core machine loads models and seeds
    the knowledge base; a process that dies is still reported at once.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while loop.time() < deadline:
            code = exit_code()
            if code is not None:
                raise RuntimeError(f"{name} exited with code {code}")
            with contextlib.suppress(grpc.aio.AioRpcError):
                response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            await asyncio.sleep(poll_s)
    raise TimeoutError(f"{name} did not become SERVING on {address} within {within}s")
