"""The run store: every transition is persisted with its cause and emitted as an event, atomically."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from runtime.database import SchemaMismatch
from runtime.database.sqlite import SQLiteDatabase as Database
from runtime.events.bus import Event, Handler, Subscription
from runtime.events.outbox import Outbox
from services.agent.model import EventType
from services.agent.run_store import RequestIdReused, RunStore
from services.agent.state_machine import IllegalTransition, RunState
from tests.services.agent.conftest import Stores, close_stores, open_stores


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
    events_before = await stores.runs.events()
    pending_before = await stores.outbox.pending_count()

    with pytest.raises(IllegalTransition) as raised:
        await stores.runs.transition(run.run_id, target, cause="too late", answer="changed?")

    assert (raised.value.from_state, raised.value.to_state) == (terminal, target)
    assert await stores.runs.get(run.run_id) == finished
    assert await stores.runs.events() == events_before
    assert await stores.outbox.pending_count() == pending_before


async def test_a_review_only_applies_to_a_run_waiting_for_one(stores: Stores) -> None:
    run, _ = await stores.runs.create(question="q?")
    with pytest.raises(IllegalTransition):
        await stores.runs.transition(
            run.run_id, RunState.COMPLETED, cause="approved", only_from=[RunState.WAITING_FOR_REVIEW]
        )
    assert (await stores.runs.get(run.run_id)).state is RunState.PROCESSING


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


async def test_sequences_are_strictly_increasing_across_runs(stores: Stores) -> None:
    for i in range(5):
        await stores.runs.create(question=f"q{i}?")
    sequences = [e.sequence for e in await stores.runs.events()]
    assert sequences == list(range(1, len(sequences) + 1))
    assert await stores.runs.last_sequence() == sequences[-1]


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


async def test_a_data_dir_of_the_build_before_versioned_migrations_keeps_working(tmp_path: Path) -> None:
    """What the previous build left: its tables (CREATE IF NOT EXISTS), PRAGMA user_version = 1, runs."""
    first = await open_stores(tmp_path)
    run, _ = await first.runs.create(question="from before the upgrade?", creator="alice", request_id="r-1")
    await close_stores(first)
    with sqlite3.connect(tmp_path / "agent.sqlite3") as old:
        old.execute("DROP TABLE schema_migrations")  # the old build had none
        assert old.execute("PRAGMA user_version").fetchone() == (1,)

    upgraded = await open_stores(tmp_path)
    try:
        assert await upgraded.runs.get(run.run_id) == run
        again, created = await upgraded.runs.create(
            question="from before the upgrade?", creator="alice", request_id="r-1"
        )
        assert (again, created) == (run, False)
    finally:
        await close_stores(upgraded)
