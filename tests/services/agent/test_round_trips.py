"""What a command costs in round trips to PostgreSQL, counted on the wire (BEGIN, COMMIT, pings included).

A database a zone away adds about a millisecond each way to every round trip, so the write path
is designed in round trips: a first CreateRun is one statement (the run, its events, their
outbox rows and the NOTIFY; it was two while a look-up of its request id came first), a replay
the same statement, which returns the run the request id made instead of writing, a state
change a read and one statement. A saga step's bookkeeping is one statement: it is marked done,
with its step event, the lease renewed and the next step marked started; a new saga's first step
is marked started by the statement creating the saga, and the last step's mark completes the
saga. A whole run's execution is counted too: it was 77, then 24 while each step read the run
again, the tool budget's reservation was a transaction of five round trips (BEGIN, the caller's
lock, a read, an insert, COMMIT), and the saga's start (begin, read its steps, mark the first
started) and end (the last mark, then the status) were separate statements. Connection set-up
and the first PREPARE of each statement on a connection are paid once per pooled connection, so
each command runs once before it is counted.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from runtime.database import open_database
from runtime.events.outbox import Outbox
from services.agent.budget import ToolBudget
from services.agent.run_store import RunStore
from services.agent.saga_log import SagaLog, SagaStatus, StepStatus
from services.agent.state_machine import RunState
from services.agent.workflow import RunWorkflow, StepEvents, WakeWatchers
from tests.services.agent.conftest import close_stores, open_stores
from tests.services.agent.engines import REFUNDS, FixedEngine, StaticRetriever
from tests.services.agent.round_trips import RoundTripCounter

pytestmark = pytest.mark.postgres


async def test_create_replay_and_transition_round_trips(tmp_path: Path, postgres_url: str) -> None:
    schema_owner = await open_stores(tmp_path, database_url=postgres_url)
    url = make_url(postgres_url)
    counter = RoundTripCounter(url.host or "127.0.0.1", url.port or 5432)
    async with counter.running():
        proxied = url.set(host="127.0.0.1", port=counter.port).render_as_string(hide_password=False)
        db = await open_database(proxied, sqlite_path=tmp_path / "unused", setting="DATABASE_URL")
        store = RunStore(db, Outbox(db))

        async def cost(command: Callable[[], Awaitable[Any]]) -> int:
            await command()  # warm: the connection is open and the statements are prepared
            before = counter.round_trips
            await command()
            return counter.round_trips - before

        async def first_create() -> None:
            await store.create(question="q?", creator="alice", request_id=uuid.uuid4().hex)

        async def replay() -> None:
            await store.create(question="q?", creator="alice", request_id="replayed")

        async def anonymous_create() -> None:
            await store.create(question="q?", creator="alice")

        async def transition() -> None:
            run, _ = await schema_owner.runs.create(question="q?")
            before = counter.round_trips
            await store.transition(run.run_id, RunState.COMPLETED, cause="answered", answer="yes")
            costs.append(counter.round_trips - before)

        async def get() -> None:
            await store.get(run_id)

        saga_log = SagaLog(db, owner="counted")

        async def begin_saga() -> None:
            await saga_log.begin((await schema_owner.runs.create(question="q?"))[0].run_id)

        async def saga_step() -> None:
            step = uuid.uuid4().hex
            await saga_log.mark_started(saga_id, 0, step)
            done = {"summary": "done"}
            await saga_log.mark_step(saga_id, step, StepStatus.DONE, result=done, listener=StepEvents(store))

        budget = ToolBudget(db, max_units_per_owner=1_000)

        async def reserve() -> None:
            await budget.reserve(uuid.uuid4().hex, owner="alice", units=2)

        flow = RunWorkflow(
            store=store,
            saga_log=saga_log,
            budget=budget,
            retriever=StaticRetriever([REFUNDS]),
            engine=FixedEngine(),
        )

        async def execute_run() -> None:
            run, _ = await schema_owner.runs.create(question="How long do refunds take?")
            before = counter.round_trips
            await flow.drive(run.run_id)  # what an executor's worker does
            costs.append(counter.round_trips - before)
            assert (await store.get(run.run_id)).state is RunState.COMPLETED

        async def settle_saga() -> None:
            saga, _ = await schema_owner.runs.create(question="q?")
            await saga_log.begin(saga.run_id)
            before = counter.round_trips
            await saga_log.set_status(saga.run_id, SagaStatus.COMPLETED, on_settled=WakeWatchers(store))
            costs.append(counter.round_trips - before)

        try:
            costs: list[int] = []
            figures = {
                "first CreateRun": await cost(first_create),
                "replayed CreateRun": await cost(replay),
                "CreateRun without request id": await cost(anonymous_create),
            }
            await cost(transition)
            figures["transition"] = costs[-1]
            run_id = (await schema_owner.runs.create(question="q?"))[0].run_id
            figures["GetRun's read"] = await cost(get)
            figures["saga begin"] = await cost(begin_saga)
            saga_id = (await schema_owner.runs.create(question="q?"))[0].run_id
            await saga_log.begin(saga_id)
            figures["saga step (started, done + step event)"] = await cost(saga_step)
            await cost(settle_saga)
            figures["saga settled"] = costs[-1]
            figures["tool budget reservation"] = await cost(reserve)
            await cost(execute_run)
            figures["a run executed (5 steps)"] = costs[-1]
        finally:
            await db.close()
    await close_stores(schema_owner)
    print(figures)
    assert figures == {
        "first CreateRun": 1,
        "replayed CreateRun": 1,
        "CreateRun without request id": 1,
        "transition": 2,
        "GetRun's read": 1,
        "saga begin": 1,
        "saga step (started, done + step event)": 2,
        "saga settled": 1,
        "tool budget reservation": 1,
        "a run executed (5 steps)": 11,
    }
