"""Registration: an instance announces itself with a gRPC check, survives Consul outages, leaves cleanly."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

from runtime.backoff import Backoff
from runtime.discovery.consul_client import ConsulAddress, open_consul
from runtime.discovery.registration import ConsulRegistrar, ServiceRegistration
from tests.doubles.consul_fixtures import ConsulUnderTest, check_statuses, health_until
from tests.doubles.echo_instance import EchoInstance
from tests.runtime.log_events import log_events
from tools.consul_double import ConsulAgentDouble

FAST_CHECKS = {"check_interval": 0.2, "check_timeout": 1.0}


@pytest.fixture
async def client(consul: ConsulUnderTest) -> AsyncIterator[Any]:
    c = open_consul(consul.address)
    yield c
    await c.close()


def registration(name: str, port: int, **overrides: Any) -> ServiceRegistration:
    return ServiceRegistration(name=name, address="127.0.0.1", port=port, version="v1", **(FAST_CHECKS | overrides))


async def test_an_instance_registers_with_a_grpc_check_and_deregisters_on_shutdown(
    consul: ConsulUnderTest, client: Any
) -> None:
    name = consul.unique("rag")
    async with EchoInstance("a") as instance:
        reg = registration(name, instance.port, tags=("blue",), meta={"zone": "local"})
        registrar = ConsulRegistrar(consul.address, reg)
        registrar.start()
        await asyncio.wait_for(registrar.registered.wait(), 10)

        service = (await client.agent.services())[reg.service_id]
        assert service["Service"] == name
        assert service["Tags"] == ["v1", "blue"]
        assert service["Meta"] == {"version": "v1", "protocol": "grpc", "zone": "local"}
        check = (await client.agent.checks())[f"service:{reg.service_id}"]
        assert check["Type"] == "grpc"
        await health_until(client, name, lambda e: check_statuses(e) == ["passing"])

        await registrar.deregister()
        assert reg.service_id not in await client.agent.services()
        assert (await client.health.service(name))[1] == []


def test_the_grpc_check_carries_tls_and_deregister_critical_service_after() -> None:
    reg = ServiceRegistration(
        name="rag",
        address="10.0.0.7",
        port=50053,
        version="v2",
        deregister_critical_after=90,
        grpc_use_tls=True,
        tls_server_name="rag.agentmesh.local",
    )
    check = reg.check()
    assert check["grpc"] == "10.0.0.7:50053"
    assert check["grpc_use_tls"] is True
    assert check["TLSServerName"] == "rag.agentmesh.local"
    assert check["DeregisterCriticalServiceAfter"] == "90s"
    assert reg.service_id.startswith("rag-") and reg.service_id.endswith("-50053")


async def test_a_service_starts_while_consul_is_down_and_registers_when_it_comes_back(
    consul: ConsulUnderTest,
) -> None:
    double = consul.require_double("cannot take a real agent down and up again from a test")
    port = double.port
    await double.stop()  # Consul is down before the instance starts

    async with EchoInstance("a") as instance:
        reg = registration("rag", instance.port)
        registrar = ConsulRegistrar(
            ConsulAddress(f"127.0.0.1:{port}"),
            reg,
            backoff=Backoff(initial=0.05, maximum=0.2),
            request_timeout=1,
        )
        with log_events() as logs:
            registrar.start()
            first = await logs.wait_for("consul.registration.unreachable")
            assert first["serving"] == "yes, without registration"
            await asyncio.sleep(0.6)  # a stretch of outage, to count the attempts made in it
            assert len(logs.named("consul.registration.unreachable")) <= 12, "retries back off, never spin"
            assert not registrar.registered.is_set()

            async with ConsulAgentDouble(port=port) as revived:
                await asyncio.wait_for(registrar.registered.wait(), 10)
                client = open_consul(ConsulAddress(revived.http_addr))
                try:
                    assert reg.service_id in await client.agent.services()
                finally:
                    await client.close()
                await registrar.deregister()
        assert logs.named("consul.registration.registered")


async def test_an_instance_the_agent_forgot_is_registered_again(consul: ConsulUnderTest, client: Any) -> None:
    async with EchoInstance("a") as instance:
        reg = registration(consul.unique("rag"), instance.port)
        registrar = ConsulRegistrar(consul.address, reg, resync_interval=0.1)
        registrar.start()
        await asyncio.wait_for(registrar.registered.wait(), 10)
        await client.agent.service.deregister(reg.service_id)  # e.g. agent restarted without its state
        await health_until(client, reg.name, lambda e: len(e) == 1)
        await registrar.deregister()


async def test_a_sigkilled_instance_goes_critical_and_leaves_the_passing_set(
    consul: ConsulUnderTest, client: Any
) -> None:
    name = consul.unique("rag")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.doubles.echo_instance",
        "--name",
        "doomed",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        port = int(await asyncio.wait_for(process.stdout.readline(), 20))
        reg = registration(name, port)
        registrar = ConsulRegistrar(consul.address, reg)
        registrar.start()
        await health_until(client, name, lambda e: check_statuses(e) == ["passing"])

        process.send_signal(signal.SIGKILL)  # no deregistration, no drain
        await process.wait()
        entries = await health_until(client, name, lambda e: check_statuses(e) == ["critical"])
        assert [e["Service"]["ID"] for e in entries] == [reg.service_id]  # still registered ...
        assert (await client.health.service(name, passing=True))[1] == []  # ... but not passing
        await registrar.deregister()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
