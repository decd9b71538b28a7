"""WatchRun ends only after sending the run's last event, however the commits interleave.

The last event of a cancelled run is not its CANCELLED transition: its saga compensates after
it, and each compensation is an event. So a watch ends once the run is terminal and its saga
has settled, woken by the commit that settles it (not by the safety-net poll, made an hour here).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import grpc
import pytest

from agentmesh.agent.v1 import agent_service_pb2 as agent_pb
from agentmesh.agent.v1 import run_pb2
from runtime.database import Database
from services.agent import servicer as servicer_module
from services.agent.budget import ToolBudget
from services.agent.commands import RunCommands
from services.agent.config import AgentSettings
from services.agent.decision import DecisionEngine, ExtractiveDecisionEngine
from services.agent.executor import RunExecutor
from services.agent.model import EventType, Run, RunEvent
from services.agent.run_store import RunStore
from services.agent.saga_log import SETTLED, SagaLog, SagaStatus, SettleListener, StepStatus
from services.agent.servicer import AgentServicer
from services.agent.state_machine import RunState
from services.agent.workflow import RunWorkflow
from tests.services.agent.conftest import Stores, close_stores, open_stores
from tests.services.agent.engines import REFUNDS, BlockingEngine, StaticRetriever

Stream = AsyncIterator[agent_pb.WatchRunResponse]
BOUND_S = 10.0


@pytest.fixture(autouse=True)
def no_safety_net_poll(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A watch that ends within the tests' bound was woken by a commit, not by the poll."""
    monkeypatch.setattr(servicer_module, "WATCH_POLL_S", 3600.0)
    yield


class CancelledBetweenTheReads(RunStore):
    """A run store that commits a cancellation just before WatchRun's first read of the run's state.

    That is the moment a real commit can land unseen: after the log read came back empty and
    before the state read sees the run terminal.
    """

    armed = False
    _log_read_empty = False

    async def events(self, run_id: str, *, after: int = 0, limit: int = 500) -> list[RunEvent]:
        read = await super().events(run_id, after=after, limit=limit)
        self._log_read_empty = not read
        return read

    async def get(self, run_id: str) -> Run:
        if self.armed and self._log_read_empty:
            self.armed = False
            await self.transition(run_id, RunState.CANCELLED, cause="cancelled by the test")
        return await super().get(run_id)


async def _idle(run_id: str) -> None:
    """Runs are never executed here: the test drives every transition itself."""


async def test_a_watch_sends_the_terminal_event_committed_between_its_log_read_and_state_read(
    stores: Stores,
) -> None:
    store = CancelledBetweenTheReads(stores.db, stores.outbox)
    run, _ = await store.create(question="How long do refunds take?")
    caught_up = (await store.events(run_id=run.run_id))[-1].sequence
    servicer = AgentServicer(
        store=store,
        sagas=stores.sagas,
        projection=stores.projection,
        commands=RunCommands(store=store, executor=RunExecutor(_idle, workers=1, backlog=0), settings=AgentSettings()),
    )
    context: Any = mock.Mock(spec=grpc.aio.ServicerContext)

    store.armed = True
    sent = [
        response.event
        async for response in servicer.WatchRun(
            agent_pb.WatchRunRequest(run_id=run.run_id, after_sequence=caught_up), context
        )
    ]

    assert not store.armed, "the hook never ran: WatchRun no longer reads the run's state"
    assert [(e.type, e.to_state) for e in sent] == [("run.state_changed", run_pb2.Run.STATE_CANCELLED)]


class HeldSagaLog(SagaLog):
    """The saga log, holding each saga's end until ``let_settle`` and telling when a watch found one unsettled."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.let_settle = asyncio.Event()
        self.found_unsettled = asyncio.Event()

    async def set_status(
        self, saga_id: str, status: SagaStatus, *, error: str = "", on_settled: SettleListener | None = None
    ) -> None:
        if status in SETTLED:
            await self.let_settle.wait()
        await super().set_status(saga_id, status, error=error, on_settled=on_settled)

    async def mark_step(self, saga_id: str, name: str, status: StepStatus, **marking: Any) -> None:
        if marking.get("completes"):  # the last step's mark ends the saga too
            await self.let_settle.wait()
        await super().mark_step(saga_id, name, status, **marking)

    async def settled(self, saga_id: str) -> bool:
        settled = await super().settled(saga_id)
        if not settled:
            self.found_unsettled.set()
        return settled


class HeldRelease(ToolBudget):
    """The tool budget, holding releases (the run's one compensation) until ``let_release``."""

    def __init__(self, db: Database) -> None:
        super().__init__(db, max_units_per_owner=100)
        self.let_release = asyncio.Event()

    async def release(self, reservation_id: str) -> None:
        await self.let_release.wait()
        await super().release(reservation_id)


def _workflow(stores: Stores, sagas: SagaLog, budget: ToolBudget, engine: DecisionEngine) -> RunWorkflow:
    return RunWorkflow(
        store=stores.runs, saga_log=sagas, budget=budget, retriever=StaticRetriever([REFUNDS]), engine=engine
    )


def _watch(stores: Stores, sagas: SagaLog, run_id: str) -> Stream:
    servicer = AgentServicer(
        store=stores.runs,
        sagas=sagas,
        projection=stores.projection,
        commands=RunCommands(
            store=stores.runs, executor=RunExecutor(_idle, workers=1, backlog=0), settings=AgentSettings()
        ),
    )
    context: Any = mock.Mock(spec=grpc.aio.ServicerContext)
    return servicer.WatchRun(agent_pb.WatchRunRequest(run_id=run_id), context)


async def _next(stream: Stream) -> run_pb2.RunEvent:
    return (await asyncio.wait_for(anext(stream), BOUND_S)).event


async def _rest(stream: Stream) -> list[run_pb2.RunEvent]:
    return [response.event async for response in stream]


async def _cancelled_mid_flight(runner: Stores, watcher: Stores) -> None:
    """``runner`` executes and compensates the run; ``watcher`` (the same replica or another) watches it live."""
    run_sagas, watch_sagas = HeldSagaLog(runner.db), HeldSagaLog(watcher.db)
    budget, engine = HeldRelease(runner.db), BlockingEngine()
    run, _ = await runner.runs.create(question="How long do refunds take?", creator="alice")
    execution = asyncio.create_task(_workflow(runner, run_sagas, budget, engine).execute(run.run_id))
    await asyncio.wait_for(engine.entered.wait(), BOUND_S)
    stream = _watch(watcher, watch_sagas, run.run_id)
    while not (await _next(stream)).cause.startswith("retrieve"):
        pass  # following it live, caught up with the steps done so far

    await runner.runs.transition(run.run_id, RunState.CANCELLED, cause="changed my mind")
    execution.cancel()
    cancelled = await _next(stream)
    assert (cancelled.from_state, cancelled.to_state) == (run_pb2.Run.STATE_PROCESSING, run_pb2.Run.STATE_CANCELLED)

    # Only now may the compensation commit: a watch ending at the terminal state would have ended already.
    rest = asyncio.create_task(_rest(stream))
    budget.let_release.set()
    await asyncio.wait_for(watch_sagas.found_unsettled.wait(), BOUND_S)
    assert not rest.done(), "the watch ended while the saga was still compensating"
    run_sagas.let_settle.set()
    sent = await asyncio.wait_for(rest, BOUND_S)
    await asyncio.gather(execution, return_exceptions=True)

    assert [(e.type, e.cause) for e in sent] == [(EventType.STEP_COMPENSATED, "reserve_budget: compensated")]
    assert [e.sequence for e in await runner.runs.events(run_id=run.run_id)][-1] == sent[-1].sequence
    assert await runner.sagas.status(run.run_id) is SagaStatus.COMPENSATED


async def test_a_watch_of_a_run_cancelled_mid_flight_sends_the_cancel_and_its_compensations_then_ends(
    stores: Stores,
) -> None:
    await _cancelled_mid_flight(stores, stores)


@pytest.mark.postgres
async def test_a_watch_on_another_replica_ends_once_the_saga_settles_there(tmp_path: Path, postgres_url: str) -> None:
    """The saga settles on the replica running it; the watching replica reads the shared saga
    state and is woken by PostgreSQL's NOTIFY of that commit."""
    runner = await open_stores(tmp_path / "runner", database_url=postgres_url)
    watcher = await open_stores(tmp_path / "watcher", database_url=postgres_url)
    try:
        await _cancelled_mid_flight(runner, watcher)
    finally:
        await close_stores(watcher)
        await close_stores(runner)


async def test_a_watch_of_a_completed_run_ends_right_after_completed(stores: Stores) -> None:
    sagas = HeldSagaLog(stores.db)
    run, _ = await stores.runs.create(question="How long do refunds take?", creator="alice")
    watch = asyncio.create_task(_rest(_watch(stores, sagas, run.run_id)))
    execution = asyncio.create_task(
        _workflow(stores, sagas, stores.budget, ExtractiveDecisionEngine()).execute(run.run_id)
    )
    # COMPLETED committed, the saga's own bookkeeping not yet: the watch waits for that commit.
    await asyncio.wait_for(sagas.found_unsettled.wait(), BOUND_S)
    assert not watch.done()
    sagas.let_settle.set()
    sent = await asyncio.wait_for(watch, BOUND_S)
    assert (await asyncio.wait_for(execution, BOUND_S)).state is RunState.COMPLETED

    assert sent[-1].to_state == run_pb2.Run.STATE_COMPLETED
    assert [e.sequence for e in sent] == [e.sequence for e in await stores.runs.events(run_id=run.run_id)]
