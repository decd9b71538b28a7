"""`AGENTMESH_<SVC>_PROCESSES=N`: one port served by N processes that behave as one instance.

The real gateway (`python -m services.gateway`) with two processes: both take calls on the one
port, SIGTERM to the parent drains both (calls in flight finish) and it exits 0; with Consul it is
registered once and deregistered on the drain.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.wrappers_pb2 import StringValue

from runtime.discovery.consul_client import open_consul
from tests.doubles.consul_fixtures import ConsulUnderTest, consul, health_until  # noqa: F401  # fixture
from tests.interceptors.echo_service import SERVICE, Echo, EchoClient, start_server
from tests.services.gateway.test_forwarding import echo_descriptor_set  # noqa: F401  # fixture
from tests.system import ServiceProcess, spawn, wait_until

pytestmark = pytest.mark.timeout(90)


class PeerEcho(Echo):
    """The echo backend, also noting which connection (gateway process) each call came over."""

    def __init__(self) -> None:
        super().__init__()
        self.peers: set[str] = set()

    async def _enter(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.peers.add(context.peer())
        await super()._enter(method, context)


@pytest.fixture
async def backend() -> AsyncIterator[tuple[PeerEcho, int]]:
    echo = PeerEcho()
    server, port = await start_server(echo)
    yield echo, port
    await server.stop(None)


def gateway_env(tmp_path: Path, descriptor_set: Path, **extra: str) -> dict[str, str]:
    return {
        "AGENTMESH_GATEWAY_PROCESSES": "2",
        "AGENTMESH_GATEWAY_PORT": "0",
        "AGENTMESH_GATEWAY_PORT_FILE": str(tmp_path / "gateway.port"),
        "AGENTMESH_GATEWAY_DATA_DIR": str(tmp_path / "data"),
        "AGENTMESH_GATEWAY_DESCRIPTOR_SET": str(descriptor_set),
        "AGENTMESH_GATEWAY_ROUTES": json.dumps({SERVICE: "echo"}),
        "AGENTMESH_GATEWAY_DRAIN_DELAY_S": "0",
        "AGENTMESH_GATEWAY_GRACE_PERIOD_S": "20",
        **extra,
    }


def log_lines(process: ServiceProcess) -> list[dict[str, Any]]:
    """The JSON lines the processes have finished writing (the log is read while they write it)."""
    lines = []
    for line in process.logs().splitlines(keepends=True):
        if line.startswith("{") and line.endswith("\n"):
            lines.append(json.loads(line))
    return lines


async def worker_pids(process: ServiceProcess) -> list[int]:
    """The workers' pids, which the parent logs right after forking.

    Waited for: the port file that `spawn` waits for is written by a worker, and on a loaded
    machine a worker can be serving before the parent, which forked it, has logged anything.
    """

    def started() -> list[dict[str, Any]]:
        return [line for line in log_lines(process) if line["event"] == "serving from processes"]

    async def logged() -> bool:
        return bool(started()) or process.process.poll() is not None

    await wait_until(logged)
    lines = started()
    assert len(lines) == 1, process.logs()  # none: the gateway exited first, and its log says why
    return list(lines[0]["pids"])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_two_processes_share_the_port_and_a_sigterm_drains_both(
    tmp_path: Path,
    backend: tuple[PeerEcho, int],
    echo_descriptor_set: Path,  # noqa: F811
) -> None:
    echo, port = backend
    echo.gate = asyncio.Event()  # calls wait at the backend until released: in flight during the drain
    env = gateway_env(
        tmp_path, echo_descriptor_set, AGENTMESH_GATEWAY_BACKENDS=json.dumps({"echo": [f"127.0.0.1:{port}"]})
    )
    gateway = await asyncio.to_thread(spawn, "services.gateway", env, tmp_path)
    channels: list[grpc.aio.Channel] = []
    calls: list[asyncio.Future[StringValue]] = []
    try:
        # The kernel spreads new connections over the processes: open them until both have calls.
        for _ in range(64):
            channel = grpc.aio.insecure_channel(gateway.address, options=[("grpc.use_local_subchannel_pool", 1)])
            channels.append(channel)
            arrived = len(calls) + 1
            calls.append(asyncio.ensure_future(EchoClient(channel).unary(StringValue(value="x"), timeout=30)))

            async def reached_backend(arrived: int = arrived) -> bool:
                return echo.calls.get("Unary", 0) >= arrived

            await wait_until(reached_backend)
            if len(echo.peers) == 2:
                break
        assert len(echo.peers) == 2, "every call went to one process"
        pids = await worker_pids(gateway)
        assert len(pids) == 2

        gateway.process.terminate()  # SIGTERM to the parent only

        async def both_draining() -> bool:
            return {line.get("worker") for line in log_lines(gateway) if line["event"] == "draining"} == {0, 1}

        await wait_until(both_draining, timeout_s=20)
        echo.gate.set()
        replies = await asyncio.gather(*calls)
        assert all(reply.value.endswith(":x") for reply in replies)
        assert await asyncio.to_thread(gateway.process.wait, 30) == 0
        assert not any(alive(pid) for pid in pids)
    finally:
        echo.gate.set()
        for channel in channels:
            await channel.close()
        await asyncio.to_thread(gateway.kill)


async def test_workers_do_not_outlive_a_killed_parent(
    tmp_path: Path,
    backend: tuple[PeerEcho, int],
    echo_descriptor_set: Path,  # noqa: F811
) -> None:
    _, port = backend
    backends = json.dumps({"echo": [f"127.0.0.1:{port}"]})
    gateway = await asyncio.to_thread(
        spawn,
        "services.gateway",
        gateway_env(tmp_path, echo_descriptor_set, AGENTMESH_GATEWAY_BACKENDS=backends),
        tmp_path,
    )
    try:
        pids = await worker_pids(gateway)
        await asyncio.to_thread(gateway.kill)  # SIGKILL: the parent cannot forward anything

        async def workers_gone() -> bool:
            return not any(alive(pid) for pid in pids)

        await wait_until(workers_gone, timeout_s=30)
    finally:
        await asyncio.to_thread(gateway.kill)


async def test_two_processes_register_as_one_instance(
    tmp_path: Path,
    consul: ConsulUnderTest,  # noqa: F811
    echo_descriptor_set: Path,  # noqa: F811
) -> None:
    env = gateway_env(
        tmp_path,
        echo_descriptor_set,
        AGENTMESH_GATEWAY_BACKENDS=json.dumps({"echo": []}),
        AGENTMESH_DISCOVERY="consul",
        AGENTMESH_CONSUL_HTTP_ADDR=str(consul.address),
        AGENTMESH_CHECK_INTERVAL_SECONDS="0.2",
    )
    gateway = await asyncio.to_thread(spawn, "services.gateway", env, tmp_path)
    client = open_consul(consul.address)
    try:
        entries = await health_until(client, "gateway", lambda e: len(e) >= 1)
        assert await asyncio.to_thread(gateway.terminate) == 0, gateway.logs()
        registered = [line for line in log_lines(gateway) if line["event"] == "consul.registration.registered"]
        assert [line.get("worker") for line in registered] == [0]
        assert [e["Service"]["Port"] for e in entries] == [gateway.port]
        assert (await client.health.service("gateway"))[1] == []
    finally:
        await client.close()
        await asyncio.to_thread(gateway.kill)
