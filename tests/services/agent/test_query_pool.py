"""On PostgreSQL a caller's read of one run (GetRun) has a pool of its own: it answers while every
connection of the write pool is held by writes that cannot finish, and still finds a run at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import grpc
import pytest

from agentmesh.agent.v1 import agent_service_pb2 as agent_pb
from agentmesh.agent.v1 import agent_service_pb2_grpc as agent_grpc
from tests.ports import free_ports
from tests.services.agent.runs import settled_run
from tests.system import start_agent, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.timeout(180)]

# A read queued for the write pool gets UNAVAILABLE after the pool's 5 s wait for a connection, so a
# read that answers within this did not queue there; the lock is held until it does.
READ_DEADLINE_S = 20.0
# Far below that 5 s: a read queued for the write pool runs out of it.
SHORT_DEADLINE_S = 2.0
# Time for the blocked CreateRun to reach the lock on a loaded machine.
BLOCKED_WITHIN_S = 60.0


@asynccontextmanager
async def agent(
    data_dir: Path, postgres_url: str, *, query_pool: int
) -> AsyncIterator[agent_grpc.AgentServiceAsyncStub]:
    """One worker and a write pool of one connection, so one blocked write holds the whole pool."""
    [nothing_there] = free_ports(1)  # no RAG: retrieval fails fast and the fixed engine decides
    server = await start_agent(
        data_dir,
        f"127.0.0.1:{nothing_there}",
        database_url=postgres_url,
        database_pool_size=1,
        database_query_pool_size=query_pool,
        workers=1,
        retrieval_timeout_s=0.2,
        decision_engine="tests.services.agent.engines:FixedEngine",
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield agent_grpc.AgentServiceStub(channel)
    finally:
        await server.stop()


@asynccontextmanager
async def writes_blocked(postgres_url: str) -> AsyncIterator[asyncpg.Connection]:
    """``runs`` locked against writes (plain reads still go through) until the block ends. Yields
    another connection to watch the server from: within one transaction PostgreSQL's activity view
    is a snapshot taken at its first read, so the locking one would never see a waiter that came later."""
    locker, observer = await asyncpg.connect(postgres_url), await asyncpg.connect(postgres_url)
    try:
        async with locker.transaction():
            await locker.execute("LOCK TABLE runs IN EXCLUSIVE MODE")
            yield observer
    finally:
        await observer.close()
        await locker.close()


async def _create_waits_on_the_lock(
    observer: asyncpg.Connection, blocked: asyncio.Future[agent_pb.CreateRunResponse]
) -> bool:
    """Whether the CreateRun's insert is waiting on the lock (failing at once, with its outcome, if
    the CreateRun ended instead: a wait would otherwise only time out, naming no cause)."""
    if blocked.done():
        raise AssertionError(
            f"the CreateRun ended before it reached the lock: {blocked.exception() or blocked.result()}"
        )
    waiting = await observer.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        " AND query LIKE 'WITH written AS (INSERT INTO runs %'"
    )
    return bool(waiting)


def _create(stub: agent_grpc.AgentServiceAsyncStub, question: str) -> asyncio.Future[agent_pb.CreateRunResponse]:
    return asyncio.ensure_future(stub.CreateRun(agent_pb.CreateRunRequest(question=question), timeout=90))


async def test_get_run_answers_while_every_write_connection_waits_behind_a_blocked_write(
    tmp_path: Path, postgres_url: str
) -> None:
    async with agent(tmp_path / "agent", postgres_url, query_pool=1) as stub:
        run = (await _create(stub, "How long do refunds take?")).run
        settled = await settled_run(stub, run.run_id, timeout_s=30)

        async with writes_blocked(postgres_url) as observer:
            # The pool's one connection is now inside a CreateRun transaction waiting on the lock.
            blocked = _create(stub, "When do orders ship?")
            await wait_until(lambda: _create_waits_on_the_lock(observer, blocked), timeout_s=BLOCKED_WITHIN_S)

            read = await stub.GetRun(agent_pb.GetRunRequest(run_id=run.run_id), timeout=READ_DEADLINE_S)

            assert read.run == settled
            assert not blocked.done()

        # Once the lock goes, the write finishes and its run is found at once through the query pool.
        created = (await blocked).run
        found = await stub.GetRun(agent_pb.GetRunRequest(run_id=created.run_id), timeout=READ_DEADLINE_S)
        assert found.run.run_id == created.run_id


async def test_with_no_query_pool_get_run_queues_behind_the_writes_for_a_connection(
    tmp_path: Path, postgres_url: str
) -> None:
    async with agent(tmp_path / "agent", postgres_url, query_pool=0) as stub:
        run = (await _create(stub, "How long do refunds take?")).run
        await settled_run(stub, run.run_id, timeout_s=30)

        async with writes_blocked(postgres_url) as observer:
            blocked = _create(stub, "When do orders ship?")
            await wait_until(lambda: _create_waits_on_the_lock(observer, blocked), timeout_s=BLOCKED_WITHIN_S)

            with pytest.raises(grpc.aio.AioRpcError) as waited:
                await stub.GetRun(agent_pb.GetRunRequest(run_id=run.run_id), timeout=SHORT_DEADLINE_S)

            assert waited.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await blocked
