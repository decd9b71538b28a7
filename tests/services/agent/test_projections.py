"""The run read model: built from events only, idempotent, rebuildable from the log, catching up by cursor."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from runtime.database.sqlite import SQLiteDatabase as Database
from runtime.events.bus import Event
from runtime.events.in_process import InProcessEventBus
from services.agent.config import AgentSettings
from services.agent.projections import InvalidPageToken, RunProjection
from services.agent.rebuild_projection import rebuild
from services.agent.run_store import RUN_EVENTS_STREAM, RunStore, event_from_run_event
from services.agent.state_machine import RunState
from tests.services.agent.conftest import Stores, open_stores
from tests.system import wait_until


async def _history(stores: Stores, n: int = 12) -> None:
    """A mix of runs in every resting state."""
    outcomes = [RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED, RunState.WAITING_FOR_REVIEW, None]
    for i in range(n):
        run, _ = await stores.runs.create(question=f"question {i}?")
        outcome = outcomes[i % len(outcomes)]
        if outcome is not None:
            await stores.runs.transition(run.run_id, outcome, cause=f"outcome {i}", answer=f"answer {i}")
        if outcome is RunState.WAITING_FOR_REVIEW and i % 2:
            await stores.runs.transition(run.run_id, RunState.COMPLETED, cause="approved")


async def _fresh(tmp_path: Path, name: str) -> tuple[Database, RunProjection]:
    db = await Database.open(tmp_path / f"{name}.sqlite3")
    projection = RunProjection(db)
    await projection.create_schema()
    return db, projection


async def test_a_projection_rebuilt_from_the_log_equals_the_live_one(stores: Stores, tmp_path: Path) -> None:
    bus = InProcessEventBus()
    await bus.subscribe(RUN_EVENTS_STREAM, group="projection", consumer="c1", handler=stores.projection.apply)
    await _history(stores)
    while await stores.outbox.relay_once(bus):
        pass
    logged = await stores.runs.feed(limit=10_000)
    latest = {event.run_id: event.sequence for _, event in logged}

    async def caught_up() -> bool:
        runs, _ = await stores.projection.snapshot()
        return {run.run_id: run.version for run in runs} == latest

    await wait_until(caught_up)
    await bus.close()
    live = await stores.projection.snapshot()

    db, rebuilt = await _fresh(tmp_path, "rebuilt")
    assert await rebuilt.rebuild(stores.runs) == len(logged)
    assert await rebuilt.snapshot() == live
    # Rebuilding in place gives the same again.
    await stores.projection.rebuild(stores.runs)
    assert await stores.projection.snapshot() == live
    await db.close()

    runs, counts = live
    assert sum(counts.values()) == len(runs) == 12
    assert counts == {
        RunState.PROCESSING: 2,
        RunState.COMPLETED: 4,
        RunState.FAILED: 3,
        RunState.CANCELLED: 2,
        RunState.WAITING_FOR_REVIEW: 1,
    }


async def test_duplicated_and_reordered_events_converge_to_the_same_view(stores: Stores, tmp_path: Path) -> None:
    await _history(stores)
    events = [event_from_run_event(e) for _, e in await stores.runs.feed(limit=10_000)]
    in_order = await stores.projection.rebuild(stores.runs)
    assert in_order == len(events)
    expected = await stores.projection.snapshot()

    db, shuffled = await _fresh(tmp_path, "shuffled")
    chaos: list[Event] = events + random.Random(7).sample(events, k=len(events))
    random.Random(11).shuffle(chaos)
    for event in chaos:
        await shuffled.apply(event)
    assert await shuffled.snapshot() == expected
    await db.close()


async def test_a_restarted_projection_catches_up_from_its_checkpoint(stores: Stores) -> None:
    await _history(stores, n=4)
    await stores.projection.catch_up(stores.runs)

    # Events committed while the read side was down: CREATED, PROCESSING, COMPLETED.
    run, _ = await stores.runs.create(question="while you were away?")
    await stores.runs.transition(run.run_id, RunState.COMPLETED, cause="done")

    assert await stores.projection.catch_up(stores.runs) == 3
    view = await stores.projection.get(run.run_id)
    assert view is not None and view.state is RunState.COMPLETED
    assert await stores.projection.catch_up(stores.runs) == 0


async def test_pages_are_newest_first_and_tokens_are_bound_to_their_filter(stores: Stores) -> None:
    await _history(stores)
    await stores.projection.catch_up(stores.runs)
    everything, _ = await stores.projection.page(page_size=100)
    seen, token = [], ""
    while True:
        page, token = await stores.projection.page(page_size=5, page_token=token)
        seen += page
        if not token:
            break
    assert seen == everything
    assert [r.create_time for r in seen] == sorted((r.create_time for r in seen), reverse=True)

    failed, _ = await stores.projection.page(state=RunState.FAILED)
    assert {r.state for r in failed} == {RunState.FAILED}
    _, token = await stores.projection.page(page_size=1)
    with pytest.raises(InvalidPageToken, match="different state filter"):
        await stores.projection.page(state=RunState.FAILED, page_token=token)
    with pytest.raises(InvalidPageToken):
        await stores.projection.page(page_token="not-a-token")


async def test_the_rebuild_command_replays_the_log_into_the_configured_read_database(tmp_path: Path) -> None:
    settings = AgentSettings(data_dir=tmp_path / "data")
    stores = await open_stores(settings.data_dir)
    await _history(stores, n=5)
    await stores.read_db.close()
    await stores.db.close()

    counts = await rebuild(settings)

    assert counts == {"CANCELLED": 1, "COMPLETED": 2, "FAILED": 1, "PROCESSING": 1}


async def test_a_follower_cancelled_as_a_commit_wakes_it_stops(stores: Stores) -> None:
    # A replica's drain cancels the read model's follower just as the last run's commit wakes it.
    # (Python 3.11's asyncio.wait_for loses that cancellation: the loop ran on and the drain hung.)
    follower = asyncio.create_task(stores.projection.follow(stores.runs, interval_s=60, gather_s=0))
    run, _ = await stores.runs.create(question="is the follower parked?")
    await wait_until(lambda: stores.projection.get(run.run_id))
    for _ in range(5):  # let it finish its catch-up and wait for the next commit
        await asyncio.sleep(0)
    stores.runs.next_commit().set()  # what the next commit does
    follower.cancel()
    done, _ = await asyncio.wait([follower], timeout=5)
    assert done, "the follower kept running after it was cancelled"


class CountingFollower(RunProjection):
    """A follower that says how often it tried for the lease and lost, and how often it read the feed."""

    lost = 0
    catch_ups = 0

    async def _leading(self, interval_s: float) -> bool:
        leads = await super()._leading(interval_s)
        self.lost += not leads
        return leads

    async def catch_up(self, store: RunStore, *, batch_size: int = 500) -> int:
        self.catch_ups += 1
        return await super().catch_up(store, batch_size=batch_size)


async def test_one_replica_follows_the_feed_and_another_takes_over_once_it_dies(stores: Stores) -> None:
    # A lease of 1.5 s: a loaded machine does not stall the leader's loop that long, so it renews.
    first, second = CountingFollower(stores.read_db), CountingFollower(stores.read_db)
    leader = asyncio.create_task(first.follow(stores.runs, interval_s=0.5, gather_s=0))
    standby: asyncio.Task[None] | None = None
    try:
        run, _ = await stores.runs.create(question="who follows?")
        await wait_until(lambda: first.get(run.run_id))
        standby = asyncio.create_task(second.follow(stores.runs, interval_s=0.5, gather_s=0))
        await wait_until(lambda: _true(second.lost >= 2))  # it tried twice while the first renewed

        run, _ = await stores.runs.create(question="still the first?")
        await wait_until(lambda: first.get(run.run_id))
        assert second.catch_ups == 0  # woken by every commit, it read nothing

        leader.cancel()  # dead: it renews no more, and does not hand over
        run, _ = await stores.runs.create(question="and now?")
        await wait_until(lambda: second.get(run.run_id))  # within the lease (1.5 s) and a try
        assert second.catch_ups > 0
    finally:
        for task in (leader, standby):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)


async def _true(value: bool) -> bool:
    return value


async def _lease_holder(stores: Stores) -> str:
    return str((await stores.read_db.fetch_one("SELECT holder FROM projection_leases WHERE name = 'runs'") or [""])[0])


async def test_a_replica_restarted_under_its_instance_id_takes_its_lease_back_at_once(stores: Stores) -> None:
    # A lease of 3 minutes: only a takeover, not its expiry, can let the restarted process follow.
    before = CountingFollower(stores.read_db, instance="agent-a")
    crashed = asyncio.create_task(before.follow(stores.runs, interval_s=60, gather_s=0))
    restarted = other = None
    try:
        run, _ = await stores.runs.create(question="who follows?")
        await wait_until(lambda: before.get(run.run_id))
        crashed.cancel()  # dead without handing over: its lease is left for 3 minutes
        await asyncio.gather(crashed, return_exceptions=True)

        stranger = CountingFollower(stores.read_db, instance="agent-b")
        other = asyncio.create_task(stranger.follow(stores.runs, interval_s=60, gather_s=0))
        await wait_until(lambda: _true(stranger.lost >= 1))  # another replica waits for the expiry

        after = CountingFollower(stores.read_db, instance="agent-a")
        restarted = asyncio.create_task(after.follow(stores.runs, interval_s=60, gather_s=0))
        run, _ = await stores.runs.create(question="and after the restart?")
        await wait_until(lambda: after.get(run.run_id))
        assert await _lease_holder(stores) == after.holder
        assert after.lost == 0 and stranger.catch_ups == 0
    finally:
        for task in (crashed, other, restarted):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)


async def test_two_live_processes_given_one_instance_id_take_the_lease_from_each_other_once(stores: Stores) -> None:
    # A configuration mistake: the newer process takes the lease at its first try, the older loses
    # its next renewal and stands by, and neither takes it from the other again.
    older, newer = (
        CountingFollower(stores.read_db, instance="agent-a"),
        CountingFollower(stores.read_db, instance="agent-a"),
    )
    first = asyncio.create_task(older.follow(stores.runs, interval_s=0.5, gather_s=0))
    second: asyncio.Task[None] | None = None
    try:
        await wait_until(lambda: _true(older.catch_ups > 0))
        assert await _lease_holder(stores) == older.holder
        second = asyncio.create_task(newer.follow(stores.runs, interval_s=0.5, gather_s=0))
        await wait_until(lambda: _true(older.lost >= 3))  # renewals every 0.5 s, each lost
        assert await _lease_holder(stores) == newer.holder
        assert newer.lost == 0

        run, _ = await stores.runs.create(question="who follows now?")
        await wait_until(lambda: newer.get(run.run_id))
    finally:
        for task in (first, second):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
