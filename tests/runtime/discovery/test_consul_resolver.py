"""Consul discovery: passing instances only, followed live with blocking queries."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import consul as consul_lib

from runtime.backoff import Backoff
from runtime.discovery.consul import ConsulResolver
from runtime.discovery.consul_client import open_consul
from runtime.discovery.endpoints import Endpoints
from tests.doubles.consul_fixtures import ConsulUnderTest
from tests.doubles.echo_instance import EchoInstance
from tests.runtime.log_events import log_events


async def next_set(watch: AsyncIterator[Endpoints]) -> list[str]:
    endpoints = await asyncio.wait_for(anext(watch), 20)
    return [e.target for e in endpoints]


async def test_the_watch_follows_checks_going_critical_and_passing_without_a_restart(
    consul: ConsulUnderTest,
) -> None:
    name = consul.unique("rag")
    client = open_consul(consul.address)
    resolver = ConsulResolver(consul.address)
    async with EchoInstance("a") as a, EchoInstance("b") as b:
        for instance in (a, b):
            check = consul_lib.Check.grpc(f"127.0.0.1:{instance.port}", "0.2s", timeout="1s")
            await client.agent.service.register(
                name,
                service_id=f"{name}-{instance.name}",
                address="127.0.0.1",
                port=instance.port,
                check=check,
            )
        watch = resolver.watch(name)
        try:
            both = sorted([f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"])
            while (current := await next_set(watch)) != both:
                assert set(current) <= set(both)  # never an instance that is not passing
            await a.set_serving(False)
            assert await next_set(watch) == [f"127.0.0.1:{b.port}"]
            await a.set_serving(True)
            assert await next_set(watch) == both
        finally:
            await watch.aclose()
            await resolver.aclose()
            for instance in (a, b):
                await client.agent.service.deregister(f"{name}-{instance.name}")
            await client.close()


async def test_an_unreachable_agent_keeps_the_last_known_instances_and_is_logged(
    consul: ConsulUnderTest,
) -> None:
    double = consul.require_double("cannot take a real agent down from a test")
    client = open_consul(consul.address)
    await client.agent.service.register(
        "rag", service_id="rag-1", address="127.0.0.1", port=50053, check=consul_lib.Check.ttl("60s")
    )
    await client.agent.check.ttl_pass("service:rag-1")
    await client.close()
    resolver = ConsulResolver(consul.address, backoff=Backoff(initial=0.05, maximum=0.1))
    watch = resolver.watch("rag")
    try:
        assert await next_set(watch) == ["127.0.0.1:50053"]
        with log_events() as logs:
            await double.stop()
            nothing_new = asyncio.ensure_future(anext(watch))
            outage = await logs.wait_for("consul.discovery.unreachable")
            assert outage["keeping"] == ["127.0.0.1:50053"]
            assert not nothing_new.done(), "an outage is not a change of instances"
            nothing_new.cancel()
    finally:
        await resolver.aclose()
