"""The Consul agent double answers like Consul: shapes, check timing, blocking queries, KV semantics.

Each test also runs against a real agent when CONSUL_HTTP_ADDR is set, which is how the double
is kept honest.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any

import consul as consul_lib
import grpc
import pytest
import trustme

from runtime.discovery.consul_client import ConsulAddress, open_consul
from tests.doubles.consul_fixtures import ConsulUnderTest, check_statuses, health_until
from tests.doubles.echo_instance import EchoInstance
from tests.ports import free_port
from tools.consul_double import ConsulAgentDouble

WAIT = 20.0  # generous: checks run on their own schedule on a loaded machine


@pytest.fixture
async def client(consul: ConsulUnderTest) -> AsyncIterator[Any]:
    c = open_consul(consul.address)
    yield c
    await c.close()


async def statuses(client: Any, service: str) -> list[str]:
    _, entries = await client.health.service(service)
    return check_statuses(entries)


async def test_a_registered_service_with_a_grpc_check_becomes_passing_then_deregisters(
    consul: ConsulUnderTest, client: Any
) -> None:
    name = consul.unique("echo")
    async with EchoInstance("a") as instance:
        check = consul_lib.Check.grpc(f"127.0.0.1:{instance.port}", "0.2s", timeout="1s", deregister="1m")
        assert await client.agent.service.register(
            name,
            service_id=f"{name}-1",
            address="127.0.0.1",
            port=instance.port,
            tags=["v1"],
            meta={"version": "v1"},
            check=check,
        )
        services = await client.agent.services()
        assert services[f"{name}-1"]["Service"] == name
        assert services[f"{name}-1"]["Tags"] == ["v1"]
        assert services[f"{name}-1"]["Meta"] == {"version": "v1"}

        assert (await client.agent.checks())[f"service:{name}-1"]["Type"] == "grpc"

        await health_until(client, name, lambda entries: check_statuses(entries) == ["passing"])
        _, entries = await client.health.service(name, passing=True)
        assert entries[0]["Service"]["Port"] == instance.port
        assert {c["CheckID"] for c in entries[0]["Checks"]} == {"serfHealth", f"service:{name}-1"}
        assert (await client.catalog.services())[1][name] == ["v1"]

        assert await client.agent.service.deregister(f"{name}-1")
        assert f"{name}-1" not in await client.agent.services()
        assert (await client.health.service(name))[1] == []
        assert not await client.agent.service.deregister(f"{name}-1")  # unknown id: 404


async def test_a_grpc_check_follows_the_instances_serving_status(consul: ConsulUnderTest, client: Any) -> None:
    name = consul.unique("echo")
    async with EchoInstance("a") as instance:
        check = consul_lib.Check.grpc(f"127.0.0.1:{instance.port}", "0.2s", timeout="1s")
        await client.agent.service.register(name, service_id=name, address="127.0.0.1", port=instance.port, check=check)
        try:
            await health_until(client, name, lambda e: check_statuses(e) == ["passing"])
            await instance.set_serving(False)
            await health_until(client, name, lambda e: check_statuses(e) == ["critical"])
            await instance.set_serving(True)
            await health_until(client, name, lambda e: check_statuses(e) == ["passing"])
        finally:
            await client.agent.service.deregister(name)


async def test_ttl_checks_move_on_pass_warn_fail_and_expire_to_critical(consul: ConsulUnderTest, client: Any) -> None:
    name = consul.unique("ttl")
    await client.agent.service.register(name, service_id=name, port=1, check=consul_lib.Check.ttl("1s"))
    check_id = f"service:{name}"
    try:
        assert await statuses(client, name) == ["critical"]
        assert await client.agent.check.ttl_pass(check_id, notes="all good")
        assert await statuses(client, name) == ["passing"]
        assert (await client.agent.checks())[check_id]["Output"] == "all good"
        assert await client.agent.check.ttl_warn(check_id)
        assert await statuses(client, name) == ["warning"]
        assert (await client.health.service(name, passing=True))[1] == []  # warning is not passing
        assert await client.agent.check.ttl_fail(check_id)
        assert await statuses(client, name) == ["critical"]
        assert await client.agent.check.ttl_pass(check_id)
        await health_until(client, name, lambda e: check_statuses(e) == ["critical"])  # nobody refreshed it
        assert "TTL expired" in (await client.agent.checks())[check_id]["Output"]
        assert not await client.agent.check.ttl_pass("no-such-check")
    finally:
        await client.agent.service.deregister(name)


async def test_a_blocking_query_returns_on_change_with_a_higher_index(consul: ConsulUnderTest, client: Any) -> None:
    name = consul.unique("blocking")
    index, entries = await client.health.service(name)
    assert entries == [] and int(index) > 0

    waiter = asyncio.create_task(client.health.service(name, index=index, wait="30s"))
    await asyncio.sleep(0.2)
    assert not waiter.done()  # nothing changed yet: the query hangs
    await client.agent.service.register(name, service_id=name, port=1, check=consul_lib.Check.ttl("30s"))
    try:
        new_index, entries = await asyncio.wait_for(waiter, WAIT)
        assert int(new_index) > int(index)
        assert [e["Service"]["ID"] for e in entries] == [name]
    finally:
        await client.agent.service.deregister(name)


async def test_a_blocking_query_without_change_returns_after_wait_with_the_same_index(
    consul: ConsulUnderTest, client: Any
) -> None:
    key = consul.unique("agentmesh-test/blocking")
    await client.kv.put(key, "v")
    index, _ = await client.kv.get(key)
    new_index, entry = await asyncio.wait_for(client.kv.get(key, index=index, wait="1s"), WAIT)
    assert new_index == index and entry["Value"] == b"v"
    await client.kv.delete(key)


async def test_kv_recurse_cas_and_delete_follow_consul_semantics(consul: ConsulUnderTest, client: Any) -> None:
    prefix = consul.unique("agentmesh-test") + "/"
    try:
        index, missing = await client.kv.get(prefix + "a")
        assert missing is None and int(index) > 0
        assert await client.kv.put(prefix + "a", "1", cas=0)  # cas=0: create only if absent
        assert not await client.kv.put(prefix + "a", "again", cas=0)
        _, entry = await client.kv.get(prefix + "a")
        assert entry["Value"] == b"1" and entry["CreateIndex"] == entry["ModifyIndex"]
        assert not await client.kv.put(prefix + "a", "2", cas=entry["ModifyIndex"] - 1)
        assert await client.kv.put(prefix + "a", "2", cas=entry["ModifyIndex"])
        assert await client.kv.put(prefix + "b/c", "3", flags=7)
        assert await client.kv.put(prefix + "empty", "")

        _, entries = await client.kv.get(prefix, recurse=True)
        assert [(e["Key"], e["Value"]) for e in entries] == [
            (prefix + "a", b"2"),
            (prefix + "b/c", b"3"),
            (prefix + "empty", None),
        ]
        assert entries[1]["Flags"] == 7
        _, keys = await client.kv.get(prefix, keys=True, separator="/")
        assert keys == [prefix + "a", prefix + "b/", prefix + "empty"]

        assert await client.kv.delete(prefix + "b", recurse=True)
        _, entries = await client.kv.get(prefix, recurse=True)
        assert [e["Key"] for e in entries] == [prefix + "a", prefix + "empty"]
    finally:
        await client.kv.delete(prefix, recurse=True)


async def test_a_service_critical_past_deregister_critical_service_after_is_reaped(
    consul: ConsulUnderTest, client: Any
) -> None:
    consul.require_double("Consul reaps only after at least one minute; too slow for the suite")
    name = consul.unique("reaped")
    check = consul_lib.Check.grpc("127.0.0.1:1", "0.1s", timeout="0.5s", deregister="0.3s")
    await client.agent.service.register(name, service_id=name, port=1, check=check)
    await health_until(client, name, lambda entries: entries == [])
    assert name not in await client.agent.services()


async def test_bad_registrations_get_consuls_400(consul: ConsulUnderTest, client: Any) -> None:
    with pytest.raises(consul_lib.ConsulException):
        await client.agent.service.register("", port=1)
    with pytest.raises(consul_lib.ConsulException):
        await client.agent.service.register(consul.unique("x"), check={"GRPC": "127.0.0.1:1"})  # no Interval


async def test_a_grpc_check_with_grpc_use_tls_probes_over_tls() -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("rag.agentmesh.local")
    server_credentials = grpc.ssl_server_credentials(
        [(leaf.private_key_pem.bytes(), b"".join(blob.bytes() for blob in leaf.cert_chain_pems))]
    )
    async with (
        EchoInstance("tls", credentials=server_credentials) as instance,
        ConsulAgentDouble(grpc_root_certificates=ca.cert_pem.bytes(), min_check_interval=0.1) as double,
    ):
        client = open_consul(ConsulAddress(double.http_addr))
        try:
            for name, use_tls in (("plain", False), ("tls", True)):
                check = consul_lib.Check.grpc(f"127.0.0.1:{instance.port}", "0.2s", use_tls=use_tls, timeout="2s")
                check["TLSServerName"] = "rag.agentmesh.local"
                # Each starts in the state its probe must change: only a real probe moves it.
                check["Status"] = "critical" if use_tls else "passing"
                await client.agent.service.register(name, port=instance.port, check=check)
            await health_until(client, "plain", lambda e: check_statuses(e) == ["critical"])
            entries = await health_until(client, "tls", lambda e: check_statuses(e) == ["passing"])
            assert "success" in entries[0]["Checks"][1]["Output"]
        finally:
            await client.close()


async def test_the_double_runs_as_a_standalone_process_for_make_run() -> None:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tools.consul_double", "--port", str(port), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        banner = await asyncio.wait_for(process.stdout.readline(), 20)
        assert f"127.0.0.1:{port}" in banner.decode()
        client = open_consul(ConsulAddress(f"127.0.0.1:{port}"))
        try:
            assert await client.status.leader()
        finally:
            await client.close()
    finally:
        process.terminate()
        await process.wait()
