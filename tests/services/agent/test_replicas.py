"""Two agent replicas on one PostgreSQL database behind one gateway, as real processes, each with
its own data dir (as pods with their own volumes): any replica answers for every run, one
request id makes one run, a SIGKILLed replica's runs settle through the survivor (also when it is an
executor of runs a "serve" replica admitted), WatchRun on
one replica follows a run executing on the other, the read model is taken over when the replica
following the feed is SIGKILLed (and taken back at once by a replica restarted on its data dir), and
the database restarting under traffic costs retryable errors only.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as redis
from google.rpc import error_details_pb2

from agentmesh.agent.v1 import agent_service_pb2 as agent_pb
from agentmesh.agent.v1 import agent_service_pb2_grpc as agent_grpc
from agentmesh.agent.v1 import run_pb2
from agentmesh.rag.v1 import rag_service_pb2 as rag_pb
from agentmesh.rag.v1 import rag_service_pb2_grpc as rag_grpc
from rpcstatus.errors import status_details
from runtime.database import open_database
from services.agent.a2a_push import PUSH_GROUP
from tests.services.agent.runs import SETTLED, assert_settled_once, listed_once, settled_run
from tests.services.agent.test_agent_service import KNOWLEDGE
from tests.system import ServiceProcess, spawn, wait_until
from tools.postgres_local import LocalPostgres
from tools.serving import wait_serving

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

# Short leases keep takeover fast; the decision and retrieval timeouts must stay below them.
FAST_TAKEOVER = {
    "SAGA_LEASE_S": "3",
    "DECISION_TIMEOUT_S": "2.5",
    "RETRIEVAL_TIMEOUT_S": "1",
    "OUTBOX_POLL_S": "0.5",
}
SLOW_DECISIONS = {
    "DECISION_ENGINE": "tests.services.agent.engines:SlowEngine",
    "DECISION_ENGINE_OPTIONS": '{"delay_s": 1.5}',
}


@dataclass
class Mesh:
    rag: ServiceProcess
    agents: list[ServiceProcess]
    gateway: ServiceProcess

    def processes(self) -> list[ServiceProcess]:
        return [self.gateway, *self.agents, self.rag]


def _service(module: str, prefix: str, name: str, tmp_path: Path, env: dict[str, str]) -> ServiceProcess:
    base = {"PORT": "0", "PORT_FILE": str(tmp_path / f"{name}.port"), "DATA_DIR": str(tmp_path / name)}
    return spawn(module, {f"AGENTMESH_{prefix}_{k}": v for k, v in {**base, **env}.items()}, tmp_path, timeout_s=60)


async def _serving(process: ServiceProcess, name: str) -> None:
    await wait_serving(name, process.address, exit_code=process.process.poll, within=60)


@asynccontextmanager
async def mesh(
    tmp_path: Path, database_url: str, roles: tuple[str, ...] = ("all", "all"), /, **agent_env: str
) -> AsyncIterator[Mesh]:
    """RAG, agents of ``roles`` (AGENTMESH_AGENT_ROLE) with ``agent_env``, and a gateway to them."""
    started: list[ServiceProcess] = []
    try:
        rag = _service("services.rag", "RAG", "rag", tmp_path, {})
        started.append(rag)
        agent_settings = {"DATABASE_URL": database_url, "RAG_ENDPOINTS": json.dumps([rag.address])}
        agents = [
            _service(
                "services.agent",
                "AGENT",
                f"agent-{n}",
                tmp_path,
                {**agent_settings, **FAST_TAKEOVER, "ROLE": role, "INSTANCE_ID": f"agent-{n}", **agent_env},
            )
            for n, role in enumerate(roles)
        ]
        started.extend(agents)
        backends = {"agent": [a.address for a in agents], "rag": [rag.address]}
        gateway = _service("services.gateway", "GATEWAY", "gateway", tmp_path, {"BACKENDS": json.dumps(backends)})
        started.append(gateway)
        for process, name in [(rag, "rag"), *((a, f"agent-{n}") for n, a in enumerate(agents)), (gateway, "gateway")]:
            await _serving(process, name)
        async with grpc.aio.insecure_channel(rag.address) as channel:
            await rag_grpc.RagServiceStub(channel).IngestDocuments(
                rag_pb.IngestDocumentsRequest(documents=KNOWLEDGE), timeout=10
            )
        yield Mesh(rag, agents, gateway)
    finally:
        for process in reversed(started):
            process.kill()


@asynccontextmanager
async def stub(address: str) -> AsyncIterator[agent_grpc.AgentServiceAsyncStub]:
    async with grpc.aio.insecure_channel(address) as channel:
        yield agent_grpc.AgentServiceStub(channel)


async def _create(agent: agent_grpc.AgentServiceAsyncStub, question: str, request_id: str = "") -> run_pb2.Run:
    request = agent_pb.CreateRunRequest(question=question, request_id=request_id or str(uuid.uuid4()))
    return (await agent.CreateRun(request, timeout=10)).run


async def _events(agent: agent_grpc.AgentServiceAsyncStub, run_id: str) -> list[run_pb2.RunEvent]:
    return [r.event async for r in agent.WatchRun(agent_pb.WatchRunRequest(run_id=run_id), timeout=30)]


async def _each_settled_once(address: str, runs: list[run_pb2.Run]) -> None:
    """Every run settles (read through ``address``), each exactly once with a gap-free history."""
    async with stub(address) as agent:
        settled = [await settled_run(agent, run.run_id, timeout_s=90) for run in runs]
        histories = [await _events(agent, run.run_id) for run in runs]
    assert all(run.state in SETTLED for run in settled)
    for history in histories:
        assert_settled_once(history)


@pytest.mark.timeout(180)
async def test_any_replica_answers_for_every_run(tmp_path: Path, postgres_url: str) -> None:
    async with mesh(tmp_path, postgres_url) as system, stub(system.gateway.address) as gateway:
        runs = [await _create(gateway, f"How long do refunds take? ({n})") for n in range(20)]
        found = 0
        for _ in range(3):
            for run in runs:
                got = (await gateway.GetRun(agent_pb.GetRunRequest(run_id=run.run_id), timeout=10)).run
                found += got.run_id == run.run_id
        await listed_once(gateway, [run.run_id for run in runs], agent_pb.ListRunsRequest(page_size=100))
        listed: list[str] = []
        token = ""
        while True:
            page = await gateway.ListRuns(agent_pb.ListRunsRequest(page_size=7, page_token=token), timeout=10)
            listed.extend(r.run_id for r in page.runs)
            token = page.next_page_token
            if not token:
                break
        for run in runs:
            await settled_run(gateway, run.run_id, timeout_s=60)
        stats = await gateway.GetRunStats(agent_pb.GetRunStatsRequest(), timeout=10)
    assert found == 60
    assert sorted(listed) == sorted(r.run_id for r in runs)
    assert sum(c.count for c in stats.counts) == 20


@pytest.mark.timeout(180)
async def test_forty_concurrent_creates_with_one_request_id_make_one_run(tmp_path: Path, postgres_url: str) -> None:
    async with mesh(tmp_path, postgres_url) as system, stub(system.gateway.address) as gateway:
        request_id = str(uuid.uuid4())

        async def create_until_answered() -> str:
            # A call racing the first one gets ABORTED (IDEMPOTENCY_IN_PROGRESS) with a retry
            # delay; a client retrying after it gets the first call's run.
            for _ in range(50):
                try:
                    return (await _create(gateway, "How long do refunds take?", request_id)).run_id
                except grpc.aio.AioRpcError as error:
                    assert error.code() == grpc.StatusCode.ABORTED, error
                    await asyncio.sleep(0.2)
            raise AssertionError("never answered")

        run_ids = await asyncio.gather(*(create_until_answered() for _ in range(40)))
        with pytest.raises(grpc.aio.AioRpcError) as reused:
            await _create(gateway, "A different question?", request_id)
        listed = await listed_once(gateway, run_ids[:1], agent_pb.ListRunsRequest(page_size=100))
    assert len(set(run_ids)) == 1
    assert reused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [r.run_id for r in listed.runs] == [run_ids[0]]


@pytest.mark.timeout(240)
async def test_runs_of_a_sigkilled_replica_settle_once_through_the_survivor(tmp_path: Path, postgres_url: str) -> None:
    async with mesh(tmp_path, postgres_url, **SLOW_DECISIONS) as system:
        doomed, survivor = system.agents
        async with stub(doomed.address) as agent:
            runs = [await _create(agent, f"How long do refunds take? ({n})") for n in range(10)]
            # Mid-flight: the first run is deciding (its retrieval step is logged).
            async for response in agent.WatchRun(agent_pb.WatchRunRequest(run_id=runs[0].run_id), timeout=30):
                if response.event.cause.startswith("retrieve:"):
                    break
        doomed.kill()  # SIGKILL: no drain, leases left to expire

        await _each_settled_once(survivor.address, runs)


@pytest.mark.timeout(240)
async def test_runs_of_a_sigkilled_executor_settle_once_through_the_other_executor(
    tmp_path: Path, postgres_url: str
) -> None:
    roles = ("serve", "execute", "execute")
    async with mesh(tmp_path, postgres_url, roles, WORKERS="4", **SLOW_DECISIONS) as system:
        serve = system.agents[0]
        async with stub(serve.address) as agent:
            runs = [await _create(agent, f"How long do refunds take? ({n})") for n in range(10)]
            # Mid-flight: the first run is deciding (its retrieval step is logged) on some executor.
            async for response in agent.WatchRun(agent_pb.WatchRunRequest(run_id=runs[0].run_id), timeout=30):
                if response.event.cause.startswith("retrieve:"):
                    break
        db = await open_database(postgres_url, sqlite_path=tmp_path / "unused.sqlite3", setting="DATABASE_URL")
        try:
            holder = await db.fetch_one("SELECT owner FROM sagas WHERE saga_id = :id", {"id": runs[0].run_id})
        finally:
            await db.close()
        assert holder is not None
        doomed = system.agents[int(holder[0].removeprefix("agent-"))]
        assert doomed is not serve
        doomed.kill()  # SIGKILL mid-run: its leases expire, the other executor takes its runs over

        await _each_settled_once(serve.address, runs)


@pytest.mark.timeout(180)
async def test_when_the_replica_following_the_feed_is_sigkilled_the_other_takes_the_read_model_over(
    tmp_path: Path, postgres_url: str
) -> None:
    db = await open_database(postgres_url, sqlite_path=tmp_path / "unused.sqlite3", setting="DATABASE_URL")
    try:
        async with mesh(tmp_path, postgres_url) as system, stub(system.gateway.address) as gateway:
            first = await _create(gateway, "How long do refunds take?")
            await listed_once(gateway, [first.run_id])
            # The follower's lease names its process.
            [(holder,)] = await db.fetch_all("SELECT holder FROM projection_leases WHERE name = 'runs'")
            [leader] = [a for a in system.agents if a.process.pid == int(holder.split(".")[0])]
            [survivor] = [a for a in system.agents if a is not leader]
            leader.kill()  # SIGKILL: the lease is left to expire (3 x OUTBOX_POLL_S)

            async with stub(survivor.address) as agent:
                after = await _create(agent, "How long do refunds take, now?")
                listed = await listed_once(agent, [first.run_id, after.run_id])
            [(holder,)] = await db.fetch_all("SELECT holder FROM projection_leases WHERE name = 'runs'")
        assert int(holder.split(".")[0]) == survivor.process.pid
        assert {r.run_id for r in listed.runs} >= {first.run_id, after.run_id}
    finally:
        await db.close()


@pytest.mark.timeout(180)
async def test_watch_on_one_replica_follows_a_run_executing_on_the_other(tmp_path: Path, postgres_url: str) -> None:
    async with mesh(tmp_path, postgres_url, **SLOW_DECISIONS) as system:
        executing, watching = system.agents
        async with stub(executing.address) as on_a, stub(watching.address) as on_b:
            run = await _create(on_a, "How long do refunds take?")
            followed = await _events(on_b, run.run_id)  # ends at the terminal event
            logged = await _events(on_a, run.run_id)
    assert [e.sequence for e in followed] == [e.sequence for e in logged]
    assert followed[-1].to_state == run_pb2.Run.STATE_COMPLETED
    assert [e.type for e in followed].count("run.step_completed") == 4


@pytest.mark.timeout(240)
async def test_the_database_restarting_under_traffic_costs_retryable_errors_only(
    tmp_path: Path, own_postgres: LocalPostgres
) -> None:
    async with mesh(tmp_path, own_postgres.url()) as system, stub(system.gateway.address) as gateway:
        accepted: list[str] = []
        refused: list[grpc.aio.AioRpcError] = []
        stopped = asyncio.Event()
        warmed_up = asyncio.Event()

        async def traffic() -> None:
            for n in range(120):
                try:
                    accepted.append((await _create(gateway, f"How long do refunds take? ({n})")).run_id)
                except grpc.aio.AioRpcError as error:
                    refused.append(error)
                if len(accepted) >= 5:
                    warmed_up.set()
                if stopped.is_set() and len(refused) >= 5 and n % 10 == 0:
                    return
                await asyncio.sleep(0.05)

        calls = asyncio.create_task(traffic())
        await asyncio.wait_for(warmed_up.wait(), timeout=60)
        await asyncio.to_thread(own_postgres.stop)
        stopped.set()
        await calls
        await asyncio.to_thread(own_postgres.start)
        # Recovers without a restart: new runs are accepted again, and every accepted one settles.
        for _ in range(100):
            try:
                accepted.append((await _create(gateway, "Back again?")).run_id)
                break
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.2)
        settled = [await settled_run(gateway, run_id, timeout_s=90) for run_id in accepted]
    assert refused, "the outage was not observed"
    for error in refused:
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error
        assert any(isinstance(d, error_details_pb2.RetryInfo) for d in status_details(error)), error
    assert accepted[-1] and all(run.state in SETTLED for run in settled)
    assert len({run.run_id for run in settled}) == len(accepted)


@pytest.mark.redis
@pytest.mark.timeout(180)
async def test_on_redis_streams_the_replicas_share_one_consumer_group(
    tmp_path: Path, postgres_url: str, redis_url: str
) -> None:
    bus = {"EVENT_BUS": "redis", "REDIS_URL": redis_url}
    async with mesh(tmp_path, postgres_url, **bus) as system, stub(system.gateway.address) as gateway:
        runs = [await _create(gateway, f"How long do refunds take? ({n})") for n in range(10)]
        settled = [await settled_run(gateway, run.run_id, timeout_s=60) for run in runs]
        client = redis.Redis.from_url(redis_url)
        try:

            async def push_group() -> dict[str, Any] | None:
                # The run events' consumer on the bus (A2A push deliveries); the read model follows the log.
                groups = await client.xinfo_groups("agent.runs")
                return next((g for g in groups if g["name"].decode() == PUSH_GROUP), None)

            async def all_acknowledged() -> bool:
                group = await push_group()
                return group is not None and group["pending"] == 0 and group["lag"] == 0

            await wait_until(all_acknowledged, timeout_s=30)
            consumers = await client.xinfo_consumers("agent.runs", PUSH_GROUP)
        finally:
            await client.aclose()

        async def all_counted() -> bool:
            stats = await gateway.GetRunStats(agent_pb.GetRunStatsRequest(), timeout=10)
            return sum(c.count for c in stats.counts) == 10

        await wait_until(all_counted)
    assert all(run.state in SETTLED for run in settled)
    assert len({c["name"] for c in consumers}) == 2  # one consumer per replica, distinct ids


@pytest.mark.timeout(180)
async def test_a_replica_restarted_on_its_data_dir_takes_the_read_model_back_without_waiting(
    tmp_path: Path, postgres_url: str
) -> None:
    # A lease of 90 s (3 x OUTBOX_POLL_S): only the takeover by its own instance id, not the
    # expiry, lets the restarted process follow within the test's time.
    env = {
        "DATABASE_URL": postgres_url,
        "RAG_ENDPOINTS": '["127.0.0.1:1"]',  # no RAG: retrieval fails fast, the decision is fixed
        "RETRIEVAL_TIMEOUT_S": "0.2",
        "DECISION_ENGINE": "tests.services.agent.engines:FixedEngine",
        "OUTBOX_POLL_S": "30",
    }
    db = await open_database(postgres_url, sqlite_path=tmp_path / "unused.sqlite3", setting="DATABASE_URL")

    async def holder_pid() -> int:
        row = await db.fetch_one("SELECT holder FROM projection_leases WHERE name = 'runs'")
        return int(row[0].split(".")[0]) if row else 0

    started: list[ServiceProcess] = []
    try:
        crashed = _service("services.agent", "AGENT", "agent", tmp_path, env)
        started.append(crashed)
        await _serving(crashed, "agent")
        await wait_until(lambda: _is(holder_pid(), crashed.process.pid))
        crashed.kill()  # SIGKILL: its lease is left for 90 s, its data dir's instance id freed

        restarted = _service("services.agent", "AGENT", "agent", tmp_path, env)  # the same data dir
        started.append(restarted)
        await _serving(restarted, "agent")
        await wait_until(lambda: _is(holder_pid(), restarted.process.pid), timeout_s=30)
        async with stub(restarted.address) as agent:
            run = await _create(agent, "How long do refunds take?")
            listed = await listed_once(agent, [run.run_id])
        assert [r.run_id for r in listed.runs] == [run.run_id]
    finally:
        for process in started:
            process.kill()
        await db.close()


async def _is(value: Awaitable[int], expected: int) -> bool:
    return await value == expected
