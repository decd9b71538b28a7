"""Serving and executing in separate replicas (``AGENTMESH_AGENT_ROLE``), on the real servers and both
backends: a "serve" replica admits runs that "execute" replicas claim and settle, each run executed
once however many executors race for it; admission is bounded by the runs no executor has begun;
CancelRun on the serving replica interrupts a run executing on another; an execute replica alone
admits runs and executes them through the same queue, woken by its own admissions.

In-process servers on one database (on SQLite, one data dir: processes sharing its files, woken by
their poll); a SIGKILLed executor is in test_replicas.py (real processes).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2

from agentmesh.agent.v1 import agent_service_pb2 as agent_pb
from agentmesh.agent.v1 import agent_service_pb2_grpc as agent_grpc
from agentmesh.agent.v1 import run_pb2
from agentmesh.rag.v1 import rag_service_pb2 as rag_pb
from agentmesh.rag.v1 import rag_service_pb2_grpc as rag_grpc
from rpcstatus.errors import status_details
from runtime.bootstrap import ManagedServer
from services.agent import servicer as servicer_module
from tests.services.agent.runs import assert_settled_once, listed_once, settled_run, until_step
from tests.services.agent.test_agent_service import KNOWLEDGE
from tests.system import start_agent, start_rag, wait_until

Run = run_pb2.Run
BLOCKING = {"decision_engine": "tests.services.agent.engines:BlockingEngine"}


@pytest.fixture(autouse=True)
def watches_poll_often_on_sqlite(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """On SQLite a replica's watchers hear of another replica's commits only by WatchRun's poll (5 s
    in production), so a watch on the serve replica would sit out that poll for each event the executor
    logs. Polled often here, the tests wait for the events, not the poll. PostgreSQL keeps the 5 s:
    its NOTIFY must wake the watchers."""
    if not database_url:
        monkeypatch.setattr(servicer_module, "WATCH_POLL_S", 0.05)


class Split:
    """RAG and agent replicas in the roles asked for, on one database."""

    def __init__(self, tmp_path: Path, database_url: str, stack: AsyncExitStack, rag: ManagedServer) -> None:
        self._tmp_path = tmp_path
        self._database_url = database_url
        self._stack = stack
        self._rag = rag
        self._replicas = 0

    async def replica(self, role: str, **settings: object) -> agent_grpc.AgentServiceAsyncStub:
        self._replicas += 1
        # On SQLite the replicas share the data dir (its database files); on PostgreSQL each has its own.
        data_dir = self._tmp_path / ("agent" if not self._database_url else f"agent-{self._replicas}")
        server = await start_agent(
            data_dir,
            f"127.0.0.1:{self._rag.port}",
            **{"role": role, "database_url": self._database_url, "claim_poll_s": 0.05, **settings},
        )
        self._stack.push_async_callback(server.stop)
        channel = await self._stack.enter_async_context(grpc.aio.insecure_channel(f"127.0.0.1:{server.port}"))
        return agent_grpc.AgentServiceStub(channel)


@asynccontextmanager
async def split(tmp_path: Path, database_url: str) -> AsyncIterator[Split]:
    async with AsyncExitStack() as stack:
        rag = await start_rag(tmp_path / "rag")
        stack.push_async_callback(rag.stop)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{rag.port}") as channel:
            await rag_grpc.RagServiceStub(channel).IngestDocuments(
                rag_pb.IngestDocumentsRequest(documents=KNOWLEDGE), timeout=10
            )
        yield Split(tmp_path, database_url, stack, rag)


async def _create(agent: agent_grpc.AgentServiceAsyncStub, question: str = "How long do refunds take?") -> Run:
    request = agent_pb.CreateRunRequest(question=question, request_id=str(uuid.uuid4()))
    return (await agent.CreateRun(request, timeout=10)).run


async def _history(agent: agent_grpc.AgentServiceAsyncStub, run_id: str) -> list[run_pb2.RunEvent]:
    return [r.event async for r in agent.WatchRun(agent_pb.WatchRunRequest(run_id=run_id), timeout=30)]


def _executed_once(history: list[run_pb2.RunEvent]) -> None:
    assert_settled_once(history)
    # Every step once (the record step's own event is the terminal transition).
    steps = Counter(e.cause.split(":")[0] for e in history if e.type == "run.step_completed")
    assert steps == Counter({"validate": 1, "reserve_budget": 1, "retrieve": 1, "decide": 1}), steps


@pytest.mark.timeout(120)
async def test_runs_admitted_by_a_serve_replica_are_settled_by_an_execute_replica(
    tmp_path: Path, database_url: str
) -> None:
    async with split(tmp_path, database_url) as system:
        serve = await system.replica("serve")
        await system.replica("execute")
        created = [await _create(serve) for _ in range(5)]
        assert all(run.state == Run.STATE_PROCESSING for run in created)
        settled = [await settled_run(serve, run.run_id, timeout_s=60) for run in created]
        histories = [await _history(serve, run.run_id) for run in created]
        # The read model, followed by the executor, lists them on the serve replica.
        await listed_once(serve, [run.run_id for run in created])
    assert [run.state for run in settled] == [Run.STATE_COMPLETED] * 5
    assert settled[0].answer == "Refunds are processed within 5 business days. [1]"
    for history in histories:
        _executed_once(history)


@pytest.mark.timeout(120)
async def test_of_two_executors_racing_for_the_runs_a_serve_replica_admits_each_run_is_executed_once(
    tmp_path: Path, database_url: str
) -> None:
    async with split(tmp_path, database_url) as system:
        serve = await system.replica("serve")
        executors = [await system.replica("execute", workers=2) for _ in range(2)]
        created = await asyncio.gather(*(_create(serve, f"How long do refunds take? ({n})") for n in range(12)))
        settled = [await settled_run(executors[n % 2], run.run_id, timeout_s=90) for n, run in enumerate(created)]
        histories = [await _history(serve, run.run_id) for run in created]
    assert all(run.state == Run.STATE_COMPLETED for run in settled)
    for history in histories:
        _executed_once(history)


@pytest.mark.timeout(120)
async def test_a_serve_replica_refuses_new_runs_once_the_unstarted_backlog_is_full(
    tmp_path: Path, database_url: str
) -> None:
    async with split(tmp_path, database_url) as system:
        serve = await system.replica("serve", backlog=2)
        waiting = [await _create(serve), await _create(serve)]  # no executor yet: both wait

        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await _create(serve)
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "at capacity (2 runs waiting for an executor)" in (raised.value.details() or "")
        [retry] = [d for d in status_details(raised.value) if isinstance(d, error_details_pb2.RetryInfo)]
        assert retry.retry_delay.ToMilliseconds() == 1000

        await system.replica("execute")  # it claims the waiting runs: room again

        async def accepted() -> bool:
            try:
                await _create(serve)
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                return False
            return True

        await wait_until(accepted, timeout_s=30)
        settled = [await settled_run(serve, run.run_id, timeout_s=60) for run in waiting]
    assert [run.state for run in settled] == [Run.STATE_COMPLETED] * 2


@pytest.mark.timeout(120)
async def test_cancelling_on_the_serve_replica_interrupts_the_run_executing_on_an_executor(
    tmp_path: Path, database_url: str
) -> None:
    async with split(tmp_path, database_url) as system:
        serve = await system.replica("serve")
        # The decision never returns: only an interruption ends this run before its 60 s timeout.
        await system.replica("execute", decision_timeout_s=60, saga_lease_s=120, **BLOCKING)
        run = await _create(serve)
        await until_step(serve, run.run_id, "retrieve")

        cancelled = await serve.CancelRun(agent_pb.CancelRunRequest(run_id=run.run_id, reason="wrong question"))
        assert cancelled.run.state == Run.STATE_CANCELLED
        async with asyncio.timeout(20):
            events = await _history(serve, run.run_id)
    transitions = [(e.from_state, e.to_state) for e in events if e.type == "run.state_changed"]
    assert transitions[-1] == (Run.STATE_PROCESSING, Run.STATE_CANCELLED)
    # The watch ended after the executor compensated what the run had done.
    assert (events[-1].type, events[-1].cause) == ("run.step_compensated", "reserve_budget: compensated")


@pytest.mark.timeout(120)
async def test_an_execute_replica_alone_admits_runs_and_settles_them_through_the_shared_queue(
    tmp_path: Path, database_url: str
) -> None:
    async with split(tmp_path, database_url) as system:
        # claim_poll_s an hour: only the admission's own wake-up can start the runs.
        execute = await system.replica("execute", claim_poll_s=3600)
        created = [await _create(execute) for _ in range(3)]
        settled = [await settled_run(execute, run.run_id, timeout_s=60) for run in created]
        histories = [await _history(execute, run.run_id) for run in created]
    assert [run.state for run in settled] == [Run.STATE_COMPLETED] * 3
    for history in histories:
        _executed_once(history)
