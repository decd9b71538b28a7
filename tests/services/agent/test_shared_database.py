"""Several replicas on one PostgreSQL database, at the store level: each replica is its own pool
(its own connections), as separate processes would be."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runtime.events.bus import Event, Handler, Subscription
from services.agent.run_store import LOG_CHANNEL, FeedPosition, RequestIdReused
from services.agent.saga_log import SagaLeased, SagaLog
from services.agent.state_machine import IllegalTransition, RunState
from tests.services.agent.conftest import Stores, close_stores, open_stores

pytestmark = pytest.mark.postgres


@pytest.fixture
async def replicas(tmp_path: Path, postgres_url: str) -> AsyncIterator[list[Stores]]:
    opened = [await open_stores(tmp_path / f"r{i}", database_url=postgres_url) for i in range(4)]
    yield opened
    for stores in opened:
        await close_stores(stores)


async def test_fifty_concurrent_creates_with_one_request_id_make_one_run(replicas: list[Stores]) -> None:
    results = await asyncio.gather(
        *(replicas[n % len(replicas)].runs.create(question="q?", creator="alice", request_id="once") for n in range(50))
    )
    assert len({run.run_id for run, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    with pytest.raises(RequestIdReused):
        await replicas[1].runs.create(question="another question?", creator="alice", request_id="once")
    assert len(await replicas[2].runs.run_ids_in([RunState.PROCESSING])) == 1


async def test_the_feed_delivers_an_append_committed_late_once_and_in_commit_safe_order(
    replicas: list[Stores],
) -> None:
    """A begins and appends first, B appends and commits, then A commits: both delivered, once each."""
    a, _ = await replicas[0].runs.create(question="slow?")
    b, _ = await replicas[1].runs.create(question="fast?")
    cursor = (await replicas[2].runs.feed(limit=10_000))[-1][0]

    async with replicas[0].db.transaction() as slow:
        await replicas[0].runs.append_step_event(slow, a.run_id, step="validate", cause="appended first")
        await replicas[1].runs.transition(b.run_id, RunState.COMPLETED, cause="committed first")
        # B's event is committed, numbered after A's; A's is not committed yet. A reader
        # resuming after B's position would never see A's: the feed holds B back instead.
        assert await replicas[2].runs.feed(after=cursor) == []
    delivered = await replicas[2].runs.feed(after=cursor)
    assert [(e.run_id, e.cause) for _, e in delivered] == [
        (a.run_id, "validate: appended first"),
        (b.run_id, "committed first"),
    ]
    a_position, b_position = (position for position, _ in delivered)
    assert a_position.position < b_position.position  # numbered in the order of the appends
    assert await replicas[2].runs.feed(after=delivered[-1][0]) == []


async def test_the_feed_orders_transaction_ids_as_numbers_across_a_digit_boundary(replicas: list[Stores]) -> None:
    """Transaction 9 comes before 10 (a text order would put "10" first, and a cursor past it skip 9)."""
    run, _ = await replicas[0].runs.create(question="q?")
    [(first, _), (second, _)] = await replicas[0].runs.feed()
    async with replicas[0].db.transaction() as tx:
        # As if the two appends had been written by those transactions (long committed: both final).
        for xid, position in ((10, first.position), (9, second.position)):
            await tx.execute(
                "UPDATE run_events SET xid = CAST(CAST(:xid AS TEXT) AS xid8) WHERE position = :position",
                {"xid": str(xid), "position": position},
            )
    ordered = await replicas[1].runs.feed()
    assert [position for position, _ in ordered] == [FeedPosition(9, second.position), FeedPosition(10, first.position)]
    # Read one at a time, the cursor passes nothing by.
    one, cursor = [], FeedPosition()
    while batch := await replicas[1].runs.feed(after=cursor, limit=1):
        one += batch
        cursor = batch[-1][0]
    assert one == ordered
    assert [event.run_id for _, event in ordered] == [run.run_id] * 2


# Created, processing, completed: per run, of 15 runs per replica.
EVENTS = 3 * 15 * 4


async def test_a_reader_following_the_feed_gets_every_event_once_while_replicas_write(
    replicas: list[Stores],
) -> None:
    writers_done = asyncio.Event()
    seen: list[str] = []

    async def write(stores: Stores, n: int) -> None:
        for i in range(15):
            run, _ = await stores.runs.create(question=f"q {n}-{i}?")
            await stores.runs.transition(run.run_id, RunState.COMPLETED, cause="done")

    async def tail() -> None:
        cursor = FeedPosition()
        while True:
            finished = writers_done.is_set()
            entries = await replicas[0].runs.feed(after=cursor)
            seen.extend(event.event_id for _, event in entries)
            if entries:
                assert [position for position, _ in entries] == sorted(position for position, _ in entries)
                cursor = entries[-1][0]
            elif finished and len(seen) >= EVENTS:
                return
            # An empty read after the writers finished is not the end: the feed holds back every event
            # until each transaction older than its own has ended, and other sessions' transactions
            # (the replicas' own NOTIFYs among them) may still be open. One it skipped is never read.
            await asyncio.sleep(0 if entries else 0.01)

    reader = asyncio.create_task(tail())
    await asyncio.gather(*(write(stores, n) for n, stores in enumerate(replicas)))
    writers_done.set()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(reader), timeout=30)
    reader.cancel()
    assert len(seen) == len(set(seen)) == EVENTS


async def test_the_outbox_relays_a_row_committed_late_once(replicas: list[Stores]) -> None:
    """The relay reads what is unsent, not "after a cursor": a late commit is relayed when it lands."""
    a, _ = await replicas[0].runs.create(question="slow?")
    b, _ = await replicas[1].runs.create(question="fast?")
    bus = CountingBus()
    while await replicas[2].outbox.relay_once(bus):
        pass
    async with replicas[0].db.transaction() as slow:
        await replicas[0].runs.append_step_event(slow, a.run_id, step="validate", cause="appended first")
        await replicas[1].runs.transition(b.run_id, RunState.COMPLETED, cause="committed first")
        assert await replicas[2].outbox.relay_once(bus) == 1
    assert await replicas[2].outbox.relay_once(bus) == 1
    assert await replicas[2].outbox.relay_once(bus) == 0
    assert len(bus.published) == len(set(bus.published)) == 6


async def test_writers_racing_on_one_run_each_decide_on_the_state_the_winner_left(replicas: list[Stores]) -> None:
    """Cancels and completions at once from every replica: one wins, the others see it and are refused."""
    run, _ = await replicas[0].runs.create(question="who wins?")

    async def move(stores: Stores, to_state: RunState) -> str:
        try:
            await stores.runs.transition(run.run_id, to_state, cause=f"to {to_state}")
        except IllegalTransition:
            return "refused"
        return str(to_state)

    outcomes = await asyncio.gather(
        *(move(stores, RunState.CANCELLED if n % 2 else RunState.COMPLETED) for n, stores in enumerate(replicas * 3))
    )
    assert outcomes.count("refused") == len(outcomes) - 1
    stream = await replicas[1].runs.events(run.run_id)
    assert [e.sequence for e in stream] == [1, 2, 3]
    assert str(stream[-1].to_state) == next(o for o in outcomes if o != "refused")


async def test_commits_on_one_replica_wake_watchers_on_another(replicas: list[Stores]) -> None:
    heard = asyncio.Queue[None]()
    await replicas[1].db.listen(LOG_CHANNEL, lambda: heard.put_nowait(None))
    await asyncio.wait_for(heard.get(), timeout=10)  # listening (called once on connect)
    await replicas[0].runs.create(question="anyone there?")
    await asyncio.wait_for(heard.get(), timeout=10)  # replica 0's announcement of its commit


async def test_of_replicas_claiming_an_expired_lease_at_once_exactly_one_takes_it(replicas: list[Stores]) -> None:
    logs = [SagaLog(stores.db, owner=f"replica-{n}", lease_s=30) for n, stores in enumerate(replicas)]
    dead = SagaLog(replicas[0].db, owner="dead", lease_s=0.01)
    await dead.begin("saga-1")
    await asyncio.sleep(0.05)  # the dead owner's lease is over

    async def claim(log: SagaLog) -> str:
        try:
            await log.begin("saga-1")
        except SagaLeased:
            return "leased"
        return log.owner

    outcomes = await asyncio.gather(*(claim(log) for log in logs))
    assert sorted(outcomes)[:-1] == ["leased"] * (len(logs) - 1)
    assert outcomes.count("leased") == len(logs) - 1


async def test_a_rebuilt_projection_equals_the_live_one_on_the_shared_database(replicas: list[Stores]) -> None:
    for n, stores in enumerate(replicas):
        run, _ = await stores.runs.create(question=f"q{n}?")
        await stores.runs.transition(run.run_id, RunState.FAILED, cause="no")
    await asyncio.gather(*(stores.projection.catch_up(stores.runs) for stores in replicas))
    live = await replicas[0].projection.snapshot()
    assert sum(live[1].values()) == len(replicas)
    await replicas[1].projection.rebuild(replicas[1].runs)
    assert await replicas[2].projection.snapshot() == live


class CountingBus:
    def __init__(self) -> None:
        self.published: list[str] = []

    async def publish(self, event: Event) -> None:
        await asyncio.sleep(0)  # let the other relays interleave
        self.published.append(event.id)

    async def subscribe(self, stream: str, *, group: str, consumer: str, handler: Handler) -> Subscription:
        raise NotImplementedError

    async def close(self) -> None:
        return None


async def test_replicas_relaying_at_once_publish_each_outbox_row_once(replicas: list[Stores]) -> None:
    for n in range(30):
        await replicas[n % len(replicas)].runs.create(question=f"q{n}?")
    bus = CountingBus()

    async def relay(stores: Stores) -> None:
        while await stores.outbox.relay_once(bus, batch_size=7) > 0:
            pass

    await asyncio.gather(*(relay(stores) for stores in replicas))
    assert len(bus.published) == 60  # CREATED and PROCESSING per run
    assert len(set(bus.published)) == 60
    assert await replicas[0].outbox.pending_count() == 0


async def test_reads_answer_at_once_while_a_change_to_the_run_is_uncommitted(replicas: list[Stores]) -> None:
    """GetRun reads the run's last committed row and the lists read the view: neither waits for a writer."""
    run, _ = await replicas[0].runs.create(question="busy?")
    await replicas[0].projection.catch_up(replicas[0].runs)
    async with replicas[0].db.transaction() as writing:
        await replicas[0].runs.append_step_event(writing, run.run_id, step="validate", cause="holding the row")
        seen = await asyncio.wait_for(replicas[1].runs.get(run.run_id), timeout=5)
        listed, _ = await asyncio.wait_for(replicas[1].projection.page(), timeout=5)
        counts = await asyncio.wait_for(replicas[1].projection.counts(), timeout=5)
    assert seen == run
    assert [r.run_id for r in listed] == [run.run_id]
    assert counts == {RunState.PROCESSING: 1}
    assert (await replicas[1].runs.get(run.run_id)).version == run.version + 1
