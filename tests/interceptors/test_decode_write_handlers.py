"""Decoding keeps working for server-streaming handlers that send with context.write() (health Watch)."""

from __future__ import annotations

from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.system import start_rag


async def test_health_watch_streams_through_the_decode_interceptor(tmp_path: Path) -> None:
    server = await start_rag(tmp_path)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=10)
            first = await call.read()
            call.cancel()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await server.stop()
