"""A tiny service on the shared bootstrap whose calls take as long as the caller asks.

Used as a process by the drain tests: `python -m tests.runtime.slow_service`.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from typing import Any

import grpc
from pydantic_settings import SettingsConfigDict

from runtime.bootstrap import ServerPlan
from runtime.config import ServiceSettings
from runtime.discovery.settings import DiscoverySettings
from runtime.entry import run_service
from runtime.live_config.settings import DynamicSettings


class SlowSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="AGENTMESH_SLOW_", extra="ignore", frozen=True)

    # Make a start-up hook fail once the server listens (as a store or registration might).
    fail_on_start: bool = False
    # Send this process SIGTERM from its last start-up hook: the signal lands as the start finishes.
    signal_on_start: bool = False


async def wait(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    # Headers first: a caller that has them knows the call is inside the handler (in flight).
    await context.send_initial_metadata((("x-in-flight", "1"),))
    await asyncio.sleep(float(request.decode()))
    return b"done"


async def ticks(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
    count = int(request.decode())
    for i in range(count):
        yield str(i).encode()
        await asyncio.sleep(0.2)


async def build(settings: SlowSettings, discovery: DiscoverySettings, *, dynamic: DynamicSettings) -> ServerPlan:
    handler = grpc.method_handlers_generic_handler(
        "test.Slow",
        {
            "Wait": grpc.unary_unary_rpc_method_handler(wait),
            "Ticks": grpc.unary_stream_rpc_method_handler(ticks),
        },
    )
    plan = ServerPlan(settings=settings, bindings=[], generic_handlers=[handler])
    if settings.fail_on_start:

        async def fail(port: int) -> None:
            raise RuntimeError("a start-up hook failed")

        plan.lifespan.on_started(fail)
    if settings.signal_on_start:

        async def stop_me(port: int) -> None:
            os.kill(os.getpid(), signal.SIGTERM)

        plan.lifespan.on_started(stop_me)
    return plan


if __name__ == "__main__":
    # Run as `python -m`, this module is __main__: its build is taken from there, not from a second import.
    raise SystemExit(run_service(SlowSettings, __name__))
