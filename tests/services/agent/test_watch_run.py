"""WatchRun ends only after sending the run's terminal event, however the commits interleave."""

from __future__ import annotations

from typing import Any
from unittest import mock

import grpc

from agentmesh.agent.v1 import agent_service_pb2 as agent_pb
from agentmesh.agent.v1 import run_pb2
from services.agent.config import AgentSettings
from services.agent.executor import RunExecutor
from services.agent.model import Run, RunEvent
from services.agent.run_store import RunStore
from services.agent.servicer import AgentServicer
from services.agent.state_machine import RunState
from tests.services.agent.conftest import Stores


class CancelledBetweenTheReads(RunStore):
    """A run store that commits a cancellation just before WatchRun's first read of the run's state.

    That is the moment a real commit can land unseen: after the log read came back empty and
    before the state read sees the run terminal.
    """

    armed = False
    _log_read_empty = False

    async def events(self, *, after: int = 0, run_id: str | None = None, limit: int = 500) -> list[RunEvent]:
        read = await super().events(after=after, run_id=run_id, limit=limit)
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
        projection=stores.projection,
        executor=RunExecutor(_idle, workers=1, backlog=0),
        settings=AgentSettings(),
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
