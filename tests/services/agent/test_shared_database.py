"""Several replicas on one PostgreSQL database, at the store level: each replica is its own pool
(its own connections), as separate processes would be."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runtime.events.bus import Event, Handler, Subscription
from services.agent.run_store import LOG_CHANNEL, RequestIdReused
from services.agent.saga_log import SagaLeased, SagaLog
from services.agent.state_machine import RunState
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


async def test_a_reader_resuming_after_n_never_skips_an_event_committed_later(replicas: list[Stores]) -> None:
    """Sequences become visible in commit order: every read "after cursor" starts at cursor + 1."""
    writers_done = asyncio.Event()
    seen: list[int] = []

    async def write(stores: Stores, n: int) -> None:
        for i in range(15):
            run, _ = await stores.runs.create(question=f"q {n}-{i}?")
            await stores.runs.transition(run.run_id, RunState.COMPLETED, cause="done")

    async def tail() -> None:
        cursor = 0
        while True:
            finished = writers_done.is_set()
            events = await replicas[0].runs.events(after=cursor)
            sequences = [e.sequence for e in events]
            assert sequences == list(range(cursor + 1, cursor + 1 + len(sequences))), (cursor, sequences)
            seen.extend(sequences)
            if events:
                cursor = sequences[-1]
            elif finished:
                return
            await asyncio.sleep(0)

    reader = asyncio.create_task(tail())
    await asyncio.gather(*(write(stores, n) for n, stores in enumerate(replicas)))
    writers_done.set()
    await asyncio.wait_for(reader, timeout=30)
    assert seen == list(range(1, 4 * 15 * 3 + 1))  # created, processing, completed per run


async def test_commits_on_one_replica_wake_watchers_on_another(replicas: list[Stores]) -> None:
    heard = asyncio.Queue[None]()
    await replicas[1].db.listen(LOG_CHANNEL, lambda: heard.put_nowait(None))
    await asyncio.wait_for(heard.get(), timeout=10)  # listening (called once on connect)
    await replicas[0].runs.create(question="anyone there?")
    await asyncio.wait_for(heard.get(), timeout=10)  # the NOTIFY of replica 0's commit


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
