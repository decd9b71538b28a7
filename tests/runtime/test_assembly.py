"""The assembly every service shares: settings loaded once are the ones used, what a build opened
is closed when it fails half-way, and what a service adds (a second servicer) is served."""

from __future__ import annotations

import socket
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from interceptors.rate_limit import Limit
from runtime.assembly import assembling
from runtime.bootstrap import ManagedServer, ServiceBinding
from runtime.config import ServiceSettings
from runtime.discovery.settings import DiscoverySettings
from runtime.live_config.settings import DynamicSettings
from tests.ports import free_port


class Resource:
    def __init__(self, name: str, closed: list[str]) -> None:
        self.name, self._closed = name, closed

    async def close(self) -> None:
        self._closed.append(self.name)


def settings(tmp_path: Path, **fields: object) -> ServiceSettings:
    return ServiceSettings.model_validate(
        {"port": 0, "host": "127.0.0.1", "drain_delay_s": 0, "grace_period_s": 1, "data_dir": tmp_path, **fields}
    )


async def test_live_config_starts_from_the_dynamic_settings_handed_in_not_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTMESH_FEATURE_FLAGS", '{"from_env": true}')
    loaded_at_start = DynamicSettings(rate_limit=Limit(rate_per_second=5, burst=5), feature_flags={"canary": True})

    async with assembling(
        settings(tmp_path), service="svc", discovery=DiscoverySettings(), dynamic=loaded_at_start
    ) as service:
        plan = service.plan([])

    assert service.live_config.current == loaded_at_start
    await plan.lifespan.aclose()


async def test_a_build_that_fails_half_way_closes_what_it_opened_and_the_shared_parts(tmp_path: Path) -> None:
    metrics_port = free_port()
    closed: list[str] = []

    with pytest.raises(RuntimeError, match="the store failed to open"):
        async with assembling(
            settings(tmp_path, metrics_port=metrics_port),
            service="svc",
            discovery=DiscoverySettings(),
            dynamic=DynamicSettings(),
        ) as service:
            service.life.closing(Resource("db", closed))
            service.life.closing(Resource("bus", closed))
            raise RuntimeError("the store failed to open")

    assert closed == ["bus", "db"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", metrics_port))  # the chain's metrics endpoint was closed too


async def test_each_binding_a_service_adds_is_served_with_health(tmp_path: Path) -> None:
    names = ["test.First", "test.Second"]

    def binding(name: str) -> ServiceBinding:
        handler = grpc.method_handlers_generic_handler(name, {})
        return ServiceBinding(name, lambda server: server.add_generic_rpc_handlers((handler,)))

    async with assembling(
        settings(tmp_path), service="svc", discovery=DiscoverySettings(), dynamic=DynamicSettings()
    ) as service:
        plan = service.plan([binding(name) for name in names])
    server = ManagedServer(plan)
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for name in names:
                reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await server.stop()
