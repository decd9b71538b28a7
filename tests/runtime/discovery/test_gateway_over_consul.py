"""The real services over Consul: two rag processes behind the gateway share calls and fail over.

The rag instances are `python -m services.rag` processes with `AGENTMESH_DISCOVERY=consul`; they
register themselves, and the gateway finds them through Consul's health API. Search is marked
NO_SIDE_EFFECTS in the proto, so a call caught by a dying instance is retried on the other.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from agentmesh.rag.v1 import document_pb2
from agentmesh.rag.v1 import rag_service_pb2 as rag_pb
from agentmesh.rag.v1 import rag_service_pb2_grpc as rag_grpc
from runtime.bootstrap import ManagedServer
from runtime.discovery.consul_client import open_consul
from runtime.discovery.registration import default_instance_id
from runtime.discovery.settings import DiscoverySettings
from services.gateway.config import GatewaySettings
from services.gateway.server import build as build_gateway
from tests.doubles.consul_fixtures import ConsulUnderTest, check_statuses, health_until
from tests.system import ServiceProcess, spawn_serving

INSTANCES = ("rag-a", "rag-b")


def discovery_env(consul: ConsulUnderTest) -> dict[str, str]:
    return {
        "AGENTMESH_DISCOVERY": "consul",
        "AGENTMESH_CONSUL_HTTP_ADDR": str(consul.address),
        "AGENTMESH_CHECK_INTERVAL_SECONDS": "0.2",
        "AGENTMESH_CHECK_TIMEOUT_SECONDS": "1",
    }


async def spawn_rag(consul: ConsulUnderTest, tmp_path: Path, name: str, version: str = "v1") -> ServiceProcess:
    env = {
        **discovery_env(consul),
        "AGENTMESH_SERVICE_VERSION": version,
        "AGENTMESH_RAG_PORT": "0",
        "AGENTMESH_RAG_PORT_FILE": str(tmp_path / f"{name}.port"),
        "AGENTMESH_RAG_DATA_DIR": str(tmp_path / name),
        # Long enough that a SIGTERMed instance is surely still draining when the test sees it
        # leave the catalog, on a busy machine too (teardown kills, so it costs no test time).
        "AGENTMESH_RAG_DRAIN_DELAY_S": "3",
        "AGENTMESH_RAG_LOG_FORMAT": "console",
    }
    process = await spawn_serving("services.rag", env, tmp_path)
    try:
        # Each instance holds one document named after it, so a search result says who served it.
        async with grpc.aio.insecure_channel(process.address) as channel:
            document = document_pb2.Document(document_id=name, text="Refunds are processed within five business days.")
            await rag_grpc.RagServiceStub(channel).IngestDocuments(
                rag_pb.IngestDocumentsRequest(documents=[document]), timeout=10
            )
    except BaseException:
        await asyncio.to_thread(process.kill)  # not yet in the fixture's hands: it would outlive the test
        raise
    return process


@pytest.fixture
async def rags(consul: ConsulUnderTest, tmp_path: Path) -> AsyncIterator[dict[str, ServiceProcess]]:
    processes: dict[str, ServiceProcess] = {}
    try:
        # rag-a is version v1, rag-b version v2 (a tag in Consul); without route weights that is no split.
        for name, version in zip(INSTANCES, ("v1", "v2"), strict=True):
            processes[name] = await spawn_rag(consul, tmp_path, name, version)
        yield processes
    finally:
        for process in processes.values():
            await asyncio.to_thread(process.kill)
        client = open_consul(consul.address)
        try:  # a SIGKILLed instance cannot deregister itself; leave a shared agent clean
            for process in processes.values():
                await client.agent.service.deregister(default_instance_id("rag", process.port))
        finally:
            await client.close()


@pytest.fixture
async def gateway(consul: ConsulUnderTest) -> AsyncIterator[ManagedServer]:
    settings = GatewaySettings(port=0, drain_delay_s=0, grace_period_s=1)
    discovery = DiscoverySettings(
        _env_file=None,
        discovery="consul",
        consul_http_addr=str(consul.address),
        check_interval_seconds=0.2,
        check_timeout_seconds=1.0,
    )
    server = ManagedServer(await build_gateway(settings, discovery))
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def consul_client(consul: ConsulUnderTest) -> AsyncIterator[Any]:
    client = open_consul(consul.address)
    yield client
    await client.close()


class Traffic:
    """Callers searching through the gateway without pause, counting who served and what failed."""

    def __init__(self, gateway_address: str, callers: int = 3) -> None:
        self._address = gateway_address
        self._callers = callers
        self.served: Counter[str] = Counter()
        self.failures: list[grpc.aio.AioRpcError] = []
        self._progress = asyncio.Condition()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._channel: grpc.aio.Channel | None = None

    async def __aenter__(self) -> Traffic:
        self._channel = grpc.aio.insecure_channel(self._address)
        rag = rag_grpc.RagServiceStub(self._channel)
        self._tasks = [asyncio.create_task(self._call(rag)) for _ in range(self._callers)]
        return self

    async def _call(self, rag: Any) -> None:
        while not self._stop.is_set():
            try:
                response = await rag.Search(rag_pb.SearchRequest(query="refunds", top_k=1), timeout=10)
                self.served[response.results[0].citation.document_id] += 1
            except grpc.aio.AioRpcError as error:
                self.failures.append(error)
            async with self._progress:
                self._progress.notify_all()

    async def until(self, predicate: Callable[[], bool], *, within: float = 20) -> None:
        async with asyncio.timeout(within), self._progress:
            await self._progress.wait_for(predicate)

    async def until_both_serve(self) -> None:
        await self.until(lambda: all(self.served[name] >= 5 for name in INSTANCES))

    async def __aexit__(self, *exc_info: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        assert self._channel is not None
        await self._channel.close(None)


async def test_two_rag_instances_share_the_calls_and_the_survivor_takes_all_when_one_is_killed(
    consul_client: Any, rags: dict[str, ServiceProcess], gateway: ManagedServer
) -> None:
    async with Traffic(f"127.0.0.1:{gateway.port}") as traffic:
        await traffic.until_both_serve()

        rags["rag-a"].process.send_signal(signal.SIGKILL)  # no drain, no deregistration
        await health_until(consul_client, "rag", lambda e: sorted(check_statuses(e)) == ["critical", "passing"])
        survivor_before = traffic.served["rag-b"]
        await traffic.until(lambda: traffic.served["rag-b"] >= survivor_before + 20)
    assert traffic.failures == [], "Search has no side effects, so every call caught by the kill was retried"


async def test_a_sigtermed_instance_leaves_consul_before_it_drains_and_no_call_fails(
    consul_client: Any, rags: dict[str, ServiceProcess], gateway: ManagedServer
) -> None:
    async with Traffic(f"127.0.0.1:{gateway.port}") as traffic:
        await traffic.until_both_serve()

        leaving = rags["rag-a"]
        leaving.process.send_signal(signal.SIGTERM)
        # Deregistered while still draining (drain_delay_s=3): gone from the catalog, not just critical.
        entries = await health_until(consul_client, "rag", lambda e: len(e) == 1)
        assert entries[0]["Service"]["Port"] == rags["rag-b"].port
        assert leaving.process.poll() is None, "deregistration comes before the drain, not after it"
        survivor_before = traffic.served["rag-b"]
        await traffic.until(lambda: traffic.served["rag-b"] >= survivor_before + 20)
        assert await asyncio.to_thread(leaving.process.wait, 20) == 0
    assert traffic.failures == []
    assert "consul.registration.deregistered" in leaving.logs()


async def test_route_weights_from_consul_kv_split_the_calls_between_versions_live(
    consul_client: Any, rags: dict[str, ServiceProcess], gateway: ManagedServer
) -> None:
    client = consul_client
    try:
        await health_until(client, "rag", lambda e: check_statuses(e) == ["passing", "passing"])
        async with Traffic(f"127.0.0.1:{gateway.port}") as traffic:
            await traffic.until_both_serve()

            # Everything to v2 (rag-b), live: once applied, v1 gets no new calls.
            await client.kv.put("agentmesh/gateway/route_weights", '{"v1": 0, "v2": 100}')
            await traffic.until(lambda: traffic.served["rag-b"] >= traffic.served["rag-a"] + 40)
            only_v2_from = dict(traffic.served)
            await traffic.until(lambda: traffic.served["rag-b"] >= only_v2_from["rag-b"] + 30)
            assert traffic.served["rag-a"] <= only_v2_from["rag-a"] + traffic._callers

            # And back to v1 only.
            await client.kv.put("agentmesh/gateway/route_weights", '{"v1": 100}')
            await traffic.until(lambda: traffic.served["rag-a"] >= only_v2_from["rag-a"] + 40)
            only_v1_from = dict(traffic.served)
            await traffic.until(lambda: traffic.served["rag-a"] >= only_v1_from["rag-a"] + 30)
            assert traffic.served["rag-b"] <= only_v1_from["rag-b"] + traffic._callers
    finally:
        await client.kv.delete("agentmesh/gateway/route_weights")
    assert traffic.failures == []
