"""The run store: every transition is persisted with its cause and emitted as an event, atomically."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from rpcstatus.errors import ApiError
from runtime.database import SchemaMismatch, open_database
from runtime.database.sqlite import SQLiteDatabase as Database
from runtime.events.bus import Event, Handler, Subscription
from runtime.events.outbox import Outbox
from services.agent.commands import domain_errors
from services.agent.model import EventType, Run
from services.agent.run_store import ConcurrentUpdate, RequestIdReused, RunNotFound, RunStore, Written, _event
from services.agent.state_machine import IllegalTransition, RunState
from tests.services.agent.conftest import Stores


class CollectingBus:
    def __init__(self) -> None:
        self.published: list[Event] = []

    async def publish(self, event: Event) -> None:
        self.published.append(event)

    async def subscribe(self, stream: str, *, group: str, consumer: str, handler: Handler) -> Subscription:
        raise NotImplementedError

    async def close(self) -> None:
        return None


async def test_a_transition_is_persisted_with_its_cause_and_published_through_the_outbox(stores: Stores) -> None:
    run, created = await stores.runs.create(question="How long do refunds take?", creator="alice")
    assert created
    assert run.state is RunState.PROCESSING
    done = await stores.runs.transition(run.run_id, RunState.COMPLETED, cause="answered", answer="5 days")

    assert (await stores.runs.get(run.run_id)) == done
    events = await stores.runs.events(run_id=run.run_id)
    assert [(e.type, e.from_state, e.to_state) for e in events] == [
        (EventType.CREATED, None, RunState.IDLE),
        (EventType.STATE_CHANGED, RunState.IDLE, RunState.PROCESSING),
        (EventType.STATE_CHANGED, RunState.PROCESSING, RunState.COMPLETED),
    ]
    assert events[-1].cause == "answered"
    assert events[-1].run.answer == "5 days"

    bus = CollectingBus()
    assert await stores.outbox.relay_once(bus) == 3
    assert [e.id for e in bus.published] == [e.event_id for e in events]


@pytest.mark.parametrize("terminal", [RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED])
@pytest.mark.parametrize("target", list(RunState))
async def test_an_illegal_transition_changes_nothing_and_emits_nothing(
    stores: Stores, terminal: RunState, target: RunState
) -> None:
    run, _ = await stores.runs.create(question="q?")
    finished = await stores.runs.transition(run.run_id, terminal, cause="finished")
    events_before = await stores.runs.events(run.run_id)
    pending_before = await stores.outbox.pending_count()

    with pytest.raises(IllegalTransition) as raised:
        await stores.runs.transition(run.run_id, target, cause="too late", answer="changed?")

    assert (raised.value.from_state, raised.value.to_state) == (terminal, target)
    assert await stores.runs.get(run.run_id) == finished
    assert await stores.runs.events(run.run_id) == events_before
    assert await stores.outbox.pending_count() == pending_before


async def test_a_review_only_applies_to_a_run_waiting_for_one(stores: Stores) -> None:
    run, _ = await stores.runs.create(question="q?")
    with pytest.raises(IllegalTransition):
        await stores.runs.transition(
            run.run_id, RunState.COMPLETED, cause="approved", only_from=[RunState.WAITING_FOR_REVIEW]
        )
    assert (await stores.runs.get(run.run_id)).state is RunState.PROCESSING


async def test_a_callers_read_finds_a_run_the_moment_it_is_created_through_the_query_pool(
    stores: Stores, database_url: str
) -> None:
    # On PostgreSQL the query pool is a pool of its own (as the server opens it); on SQLite there is none.
    queries = await open_database(database_url, sqlite_path=Path("unused"), setting="Q") if database_url else None
    store = RunStore(stores.db, stores.outbox, queries=queries)
    try:
        run, _ = await store.create(question="How long do refunds take?", start=False)

        assert await store.get_for_caller(run.run_id) == run == await store.get(run.run_id)
        with pytest.raises(RunNotFound):
            await store.get_for_caller("no-such-run")
    finally:
        if queries is not None:
            await queries.close()


async def test_the_same_request_id_returns_the_first_run_and_a_different_request_is_refused(stores: Stores) -> None:
    first, created = await stores.runs.create(question="q?", creator="alice", request_id="r-1")
    again, created_again = await stores.runs.create(question="q?", creator="alice", request_id="r-1")
    assert created and not created_again
    assert again == first
    # Another caller's request ids are their own.
    _, other = await stores.runs.create(question="q?", creator="bob", request_id="r-1")
    assert other
    with pytest.raises(RequestIdReused):
        await stores.runs.create(question="another question?", creator="alice", request_id="r-1")


async def test_each_run_numbers_its_own_events_and_the_feed_holds_every_event_once(stores: Stores) -> None:
    runs = [(await stores.runs.create(question=f"q{i}?"))[0] for i in range(5)]
    await stores.runs.transition(runs[0].run_id, RunState.COMPLETED, cause="done")
    for run in runs:
        stream = await stores.runs.events(run.run_id)
        assert [e.sequence for e in stream] == list(range(1, len(stream) + 1))
        assert [e.run.version for e in stream] == [e.sequence for e in stream]
        assert (await stores.runs.get(run.run_id)).version == len(stream)
    feed = await stores.runs.feed()
    assert [position for position, _ in feed] == sorted({position for position, _ in feed})
    assert len(feed) == 2 * 5 + 1
    # Resuming after any position gives exactly the rest.
    assert await stores.runs.feed(after=feed[3][0]) == feed[4:]


async def test_a_write_over_a_version_another_writer_moved_changes_nothing(stores: Stores) -> None:
    run, _ = await stores.runs.create(question="q?")
    stale = await stores.runs.get(run.run_id)
    await stores.runs.transition(run.run_id, RunState.CANCELLED, cause="cancelled")
    moved = replace(stale, state=RunState.COMPLETED, version=stale.version + 1)
    event = _event(moved, EventType.STATE_CHANGED, "answered", to_state=RunState.COMPLETED)
    assert not await stores.runs._write(None, moved, [event], push_configs=0)
    assert (await stores.runs.get(run.run_id)).state is RunState.CANCELLED
    assert [e.to_state for e in await stores.runs.events(run.run_id)][-1] is RunState.CANCELLED


async def test_a_database_written_by_another_schema_is_refused_at_start_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "agent.sqlite3"
    with sqlite3.connect(path) as old:  # an unversioned schema, as an older build wrote it
        old.execute("CREATE TABLE runs (seq INTEGER PRIMARY KEY, body BLOB)")
    db = await Database.open(path)
    try:
        with pytest.raises(SchemaMismatch, match="move the data dir aside"):
            await RunStore(db, Outbox(db)).create_schema()
    finally:
        await db.close()

    fresh = await Database.open(tmp_path / "fresh.sqlite3")
    try:
        store = RunStore(fresh, Outbox(fresh))
        await store.create_schema()
        await store.create_schema()  # a restart on its own schema is fine
    finally:
        await fresh.close()


class AlwaysOvertaken(RunStore):
    """A run store whose every write over a version finds another writer got there first."""

    async def _write(self, tx: Any, run: Run, events: Any, *, push_configs: int, insert: Any = None) -> Written:
        if insert is not None:
            return await super()._write(tx, run, events, push_configs=push_configs, insert=insert)
        return Written(False)


async def test_a_command_that_keeps_losing_races_gives_up_with_a_retryable_error(stores: Stores) -> None:
    store = AlwaysOvertaken(stores.db, stores.outbox)
    run, _ = await store.create(question="q?")
    with pytest.raises(ConcurrentUpdate):
        await store.transition(run.run_id, RunState.CANCELLED, cause="cancelled")
    assert (await store.get(run.run_id)).state is RunState.PROCESSING

    with pytest.raises(ApiError) as raised, domain_errors():
        await store.transition(run.run_id, RunState.CANCELLED, cause="cancelled")
    assert raised.value.code is grpc.StatusCode.ABORTED
    assert "retry" in raised.value.message
    [retry] = [d for d in raised.value.details if isinstance(d, error_details_pb2.RetryInfo)]
    assert retry.retry_delay.ToMilliseconds() > 0
