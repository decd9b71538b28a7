"""The A2A push outbox on both backends: two replicas deliver each update once, in log order, and give up when told;
an event read for configs only where its run may have some, and no push lost to a config stored concurrently."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from a2a.types import a2a_pb2
from aiohttp import web

from runtime.database import open_database
from runtime.events.bus import Event
from services.agent.a2a_push import PushNotifications
from services.agent.a2a_push_policy import PushSettings
from services.agent.model import Run
from services.agent.run_store import RunStore, event_from_run_event
from services.agent.state_machine import RunState
from tests.services.agent.conftest import Stores, close_stores, open_stores
from tests.system import wait_until

LOOPBACK_ALLOWED = PushSettings.model_validate(
    {"allowed_networks": ["127.0.0.0/8"], "initial_backoff_s": 0.01, "max_backoff_s": 0.01, "max_attempts": 3}
)


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[tuple[str, int]], list[int]]]:
    """A webhook's URL, the (notification id, status) it answered, and the statuses to answer next."""
    seen: list[tuple[str, int]] = []
    script: list[int] = []

    async def handle(request: web.Request) -> web.Response:
        status = script.pop(0) if script else 200
        seen.append((request.headers["X-A2A-Notification-Id"], status))
        return web.Response(status=status)

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/hook", seen, script
    await runner.cleanup()


@pytest.fixture
async def push(stores: Stores) -> PushNotifications:
    """This replica's push notifications, on the stores' database, its schema made."""
    made = PushNotifications(stores.db, LOOPBACK_ALLOWED)
    await made.create_schema()
    return made


async def _completed_run_events(stores: Stores, push: PushNotifications, url: str) -> list[Event]:
    run, _ = await stores.runs.create(question="How long do refunds take?")
    config = a2a_pb2.TaskPushNotificationConfig(task_id=run.run_id, url=url)
    await push.save(config, creator="alice")
    await stores.runs.transition(run.run_id, RunState.COMPLETED, cause="answered", answer="5 business days")
    return [event_from_run_event(e) for e in await stores.runs.events(run_id=run.run_id)]


async def _drain(replicas: list[PushNotifications]) -> None:
    async with aiohttp.ClientSession() as session:
        while await replicas[0].pending():
            await asyncio.gather(*(replica.deliver_once(session) for replica in replicas))
            await asyncio.sleep(0.02)  # let a backed-off row come due


async def test_two_replicas_and_a_redelivered_event_send_each_update_once_in_order(
    stores: Stores, receiver: tuple[str, list[tuple[str, int]], list[int]]
) -> None:
    url, seen, script = receiver
    first, second = PushNotifications(stores.db, LOOPBACK_ALLOWED), PushNotifications(stores.db, LOOPBACK_ALLOWED)
    await first.create_schema()
    events = await _completed_run_events(stores, first, url)
    script.append(503)  # the first attempt fails: it must be retried before anything after it

    for event in events:  # the bus delivers at least once: both replicas' consumers may see an event
        await first.enqueue(event)
        await second.enqueue(event)
    await _drain([first, second])

    accepted = [notification for notification, status in seen if status == 200]
    assert len(accepted) == len(set(accepted)) == 3  # PROCESSING status, answer artifact, COMPLETED status
    assert accepted[0] == seen[0][0]
    assert accepted == sorted(accepted, key=lambda n: ([e.id for e in events].index(n.split(".")[0]), n))


async def test_a_destination_that_keeps_failing_is_abandoned_after_max_attempts(
    stores: Stores, push: PushNotifications, receiver: tuple[str, list[tuple[str, int]], list[int]]
) -> None:
    url, seen, script = receiver
    script.extend([500] * 10)
    for event in await _completed_run_events(stores, push, url):
        await push.enqueue(event)

    await _drain([push])

    # The first update is tried max_attempts times, then abandoned; the rest follow it, each tried 3 times too.
    assert [status for _, status in seen] == [500] * 9
    assert len({notification for notification, _ in seen}) == 3


async def _published(stores: Stores) -> list[Event]:
    """What the outbox hands the bus, in order: the events as the push consumer gets them."""
    return [Event.from_json(row[0]) for row in await stores.db.fetch_all("SELECT event FROM outbox ORDER BY seq")]


async def _step(stores: Stores, run_id: str, step: str) -> None:
    async with stores.db.transaction() as tx:
        await stores.runs.append_step_event(tx, run_id, step=step, cause="done")


async def _deliveries(stores: Stores) -> list[str]:
    rows = await stores.db.fetch_all("SELECT delivery_id FROM a2a_push_deliveries ORDER BY sequence, delivery_id")
    return [row[0] for row in rows]


async def test_each_event_carries_its_runs_config_count_and_one_that_says_none_is_not_read(
    stores: Stores, push: PushNotifications, receiver: tuple[str, list[tuple[str, int]], list[int]]
) -> None:
    url, _, _ = receiver
    run, _ = await stores.runs.create(question="How long do refunds take?")
    await _step(stores, run.run_id, "retrieve")  # before any config
    stored = await push.save(a2a_pb2.TaskPushNotificationConfig(task_id=run.run_id, url=url), creator="alice")
    await _step(stores, run.run_id, "decide")  # an append: counted from the row it updates
    await stores.runs.transition(run.run_id, RunState.COMPLETED, cause="answered", answer="5 days")  # an update

    events = await _published(stores)
    assert [(e.type, e.data["push_configs"]) for e in events] == [
        ("run.created", 0),
        ("run.state_changed", 0),
        ("run.step_completed", 0),
        ("run.step_completed", 1),
        ("run.state_changed", 1),
    ]
    for event in events:  # all consumed once the config is stored
        await push.enqueue(event)

    # The step before the config is not pushed although the config existed when it was consumed
    # (it said 0: no read); the step and the answer after it are (their count said 1: read).
    assert [d.split(".")[0] for d in await _deliveries(stores)] == [events[3].id, events[4].id, events[4].id]

    await push.delete(run.run_id, stored.id)
    async with stores.db.transaction() as tx:
        await stores.runs.append_compensation_event(tx, run.run_id, step="retrieve")
    assert (await _published(stores))[-1].data["push_configs"] == 0


async def test_a_config_stored_concurrently_on_another_replica_is_counted_by_every_event_committed_after_it(
    stores: Stores, receiver: tuple[str, list[tuple[str, int]], list[int]], database_url: str, tmp_path: Path
) -> None:
    """Saves and writes race from two replicas; whatever the interleaving, an event written once a
    save has returned counts its config, and counts never fall while configs are only added."""
    url, _, _ = receiver
    other_db = (
        await open_database(database_url, sqlite_path=tmp_path / "unused.sqlite3", setting="DATABASE_URL")
        if database_url
        else stores.db  # SQLite: one writer per file, so the replicas share it
    )
    try:
        here, there = PushNotifications(stores.db, LOOPBACK_ALLOWED), PushNotifications(other_db, LOOPBACK_ALLOWED)
        await here.create_schema()
        runs = [(await stores.runs.create(question=f"q{n}?", start=False))[0].run_id for n in range(8)]

        async def save_twice(run_id: str) -> int:
            for _ in range(2):
                await there.save(a2a_pb2.TaskPushNotificationConfig(task_id=run_id, url=url), creator="bob")
            return (await stores.runs.get(run_id)).version

        async def write(run_id: str) -> None:  # updates (read, then write if unchanged) and appends
            await stores.runs.transition(run_id, RunState.PROCESSING, cause="admitted")
            await _step(stores, run_id, "retrieve")
            await stores.runs.transition(run_id, RunState.WAITING_FOR_REVIEW, cause="unsure", answer="a")
            await _step(stores, run_id, "notify")

        saved_at = await asyncio.gather(*(save_twice(r) for r in runs), *(write(r) for r in runs))
        for run_id in runs:
            await stores.runs.transition(run_id, RunState.COMPLETED, cause="answered", answer="a")
        for run_id, version_when_saved in zip(runs, saved_at[: len(runs)], strict=True):
            counts = [(e.data["sequence"], e.data["push_configs"]) for e in await _published(stores) if e.key == run_id]
            assert [c for _, c in counts] == sorted(c for _, c in counts), counts
            assert all(c == 2 for version, c in counts if version > version_when_saved), (version_when_saved, counts)
            assert counts[-1][1] == 2
    finally:
        if other_db is not stores.db:
            await other_db.close()


class ConfigSavedAfterTheRead(RunStore):
    """A writer on one replica that, between reading a run and writing it, lets another replica
    store a push config for it: the interleaving that must not lose the config's pushes."""

    other_replica: PushNotifications
    url: str
    saves_left = 0

    async def _current(self, run_id: str, tx: Any = None) -> tuple[Run, int]:
        found = await super()._current(run_id, tx)
        if self.saves_left:
            self.saves_left -= 1
            await self.other_replica.save(a2a_pb2.TaskPushNotificationConfig(task_id=run_id, url=self.url), creator="b")
        return found


async def test_an_update_that_read_its_run_before_a_config_was_stored_counts_the_config(
    stores: Stores, receiver: tuple[str, list[tuple[str, int]], list[int]]
) -> None:
    url, _, _ = receiver
    writer = ConfigSavedAfterTheRead(stores.db, stores.outbox)
    writer.other_replica, writer.url = PushNotifications(stores.db, LOOPBACK_ALLOWED), url
    await writer.other_replica.create_schema()
    run, _ = await writer.create(question="q?")

    writer.saves_left = 1
    await writer.transition(run.run_id, RunState.COMPLETED, cause="answered", answer="a")

    # The write found the count moved since its read, read again and wrote the event with it.
    completed = (await _published(stores))[-1]
    assert (completed.data["to_state"], completed.data["push_configs"]) == ("COMPLETED", 1)
    await writer.other_replica.enqueue(completed)
    assert len(await _deliveries(stores)) == 2  # the answer artifact and the COMPLETED status


async def test_a_run_created_with_a_config_to_follow_counts_it_from_its_first_events(
    stores: Stores, push: PushNotifications, receiver: tuple[str, list[tuple[str, int]], list[int]]
) -> None:
    url, _, _ = receiver
    run, _ = await stores.runs.create(question="q?", push_config_follows=True)
    assert [e.data["push_configs"] for e in await _published(stores)] == [1, 1]
    await push.save(a2a_pb2.TaskPushNotificationConfig(task_id=run.run_id, url=url), creator="alice")
    await stores.runs.transition(run.run_id, RunState.WAITING_FOR_REVIEW, cause="unsure", answer="a")
    assert (await _published(stores))[-1].data["push_configs"] == 1  # the recount made it exact


@pytest.mark.postgres
async def test_on_postgresql_writes_wait_for_a_config_being_stored_and_count_it(
    postgres_url: str, tmp_path: Path, receiver: tuple[str, list[tuple[str, int]], list[int]]
) -> None:
    url, _, _ = receiver
    stores = await open_stores(tmp_path, database_url=postgres_url)
    try:
        push = PushNotifications(stores.db, LOOPBACK_ALLOWED)
        await push.create_schema()
        run, _ = await stores.runs.create(question="q?")
        # The config's transaction holds the run row until the test lets it go: a trigger inside
        # its INSERT waits for an advisory lock the test holds (a sleep would be a race: on a loaded
        # machine the writes could start after it ended, and no longer test waiting for the row).
        await stores.db.execute(
            "CREATE FUNCTION gated_insert() RETURNS trigger LANGUAGE plpgsql"
            f" AS $$ BEGIN PERFORM pg_advisory_xact_lock({GATE}); RETURN NEW; END $$"
        )
        await stores.db.execute(
            "CREATE TRIGGER gated BEFORE INSERT ON a2a_push_configs FOR EACH ROW EXECUTE FUNCTION gated_insert()"
        )
        gate = await asyncpg.connect(postgres_url)
        try:
            await gate.execute(f"SELECT pg_advisory_lock({GATE})")
            saving = asyncio.create_task(
                push.save(a2a_pb2.TaskPushNotificationConfig(task_id=run.run_id, url=url), creator="alice")
            )
            # Both kinds of write start while the config is being stored: an append (no read) and an
            # update (read first, when the count is still 0). Each waits for the row and counts the config.
            await wait_until(lambda: _lock_waiters(gate, 1, saving), timeout_s=30)
            assert not saving.done(), saving.result()  # it holds the run row now
            writing = asyncio.gather(
                _step(stores, run.run_id, "retrieve"),
                stores.runs.transition(run.run_id, RunState.WAITING_FOR_REVIEW, cause="unsure", answer="a"),
            )
            await wait_until(lambda: _lock_waiters(gate, 3, writing), timeout_s=30)
            await gate.execute(f"SELECT pg_advisory_unlock({GATE})")
            await writing
        finally:
            await gate.close()
        await saving
        assert sorted((e.type, e.data["push_configs"]) for e in (await _published(stores))[-2:]) == [
            ("run.state_changed", 1),
            ("run.step_completed", 1),
        ]
    finally:
        await close_stores(stores)


# The advisory lock the test holds to keep a config's transaction open (any number no other test takes).
GATE = 727_001


async def _lock_waiters(gate: asyncpg.Connection, count: int, task: asyncio.Future[Any]) -> bool:
    """Whether ``count`` statements wait for a lock (or ``task`` ended instead: its result says why)."""
    waiting = await gate.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    return bool(waiting >= count or task.done())
