"""The console's instances come from discovery: with Consul, every registered one, critical ones included."""

from __future__ import annotations

import asyncio

import consul as consul_lib
import pytest

from console.inventory import ConsulInventory, InventoryUnavailable, StaticInventory
from runtime.discovery.consul_client import ConsulAddress, open_consul
from tests.doubles.consul_fixtures import ConsulUnderTest
from tests.doubles.echo_instance import EchoInstance
from tests.ports import free_port


async def test_consul_instances_carry_their_version_and_an_instance_that_stops_serving_looks_it(
    consul: ConsulUnderTest,
) -> None:
    name = consul.unique("agent")
    client = open_consul(consul.address)
    inventory = ConsulInventory(consul.address, [name])
    async with EchoInstance("v1") as v1, EchoInstance("v2") as v2:
        for version, instance in (("v1", v1), ("v2", v2)):
            await client.agent.service.register(
                name,
                service_id=f"{name}-{version}",
                address="127.0.0.1",
                port=instance.port,
                tags=[version],
                meta={"version": version},
                check=consul_lib.Check.grpc(f"127.0.0.1:{instance.port}", "0.2s", timeout="1s"),
            )
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while {(i.version, i.health) for i in await inventory.instances()} != {
                ("v1", "passing"),
                ("v2", "passing"),
            }:
                assert loop.time() < deadline, "both instances never became passing in Consul"
                await asyncio.sleep(0.1)
            await v2.set_serving(False)
            while True:
                by_version = {i.version: i for i in await inventory.instances()}
                if by_version["v2"].health == "critical":
                    break
                assert loop.time() < deadline, f"v2 never looked critical: {by_version['v2']}"
                await asyncio.sleep(0.1)
            assert by_version["v1"].health == "passing"
            assert by_version["v2"].address == f"127.0.0.1:{v2.port}"
            assert "NOT_SERVING" in by_version["v2"].detail  # the console's own probe says why
        finally:
            await inventory.aclose()
            for version in ("v1", "v2"):
                await client.agent.service.deregister(f"{name}-{version}")
            await client.close()


async def test_consul_that_does_not_answer_is_reported_not_shown_as_an_empty_mesh() -> None:
    inventory = ConsulInventory(ConsulAddress(f"127.0.0.1:{free_port()}"), ["gateway"])
    try:
        with pytest.raises(InventoryUnavailable, match="did not answer"):
            await inventory.instances()
    finally:
        await inventory.aclose()


async def test_static_instances_take_their_versions_from_the_settings() -> None:
    async with EchoInstance("a") as a:
        target = f"127.0.0.1:{a.port}"
        inventory = StaticInventory({"agent": [target]}, {target: "v2"})
        (instance,) = await inventory.instances()
        await inventory.aclose()
    assert (instance.service, instance.version, instance.health) == ("agent", "v2", "passing")
