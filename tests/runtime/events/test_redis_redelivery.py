"""Redis Streams: events a consumer read but never acknowledged are redelivered after it dies, and
applied once thanks to deduplication by event id."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest

from runtime.database.sqlite import SQLiteDatabase as Database
from runtime.events.bus import Event
from runtime.events.redis_streams import RedisStreamsEventBus
from tests.runtime.events.ledger import Ledger
from tests.system import wait_until

pytestmark = pytest.mark.redis

REPO_ROOT = Path(__file__).resolve().parents[3]


async def test_events_of_a_consumer_killed_before_ack_are_redelivered_and_applied_once(
    redis_url: str, tmp_path: Path
) -> None:
    db_path = tmp_path / "ledger.db"
    db = await Database.open(db_path)
    ledger = Ledger(db, consumer="ledger")
    await ledger.create_schema()
    publisher = RedisStreamsEventBus.from_url(redis_url)
    await publisher.client.delete("payments")
    events = [Event(stream="payments", type="payment.captured", key=f"p-{i}") for i in range(5)]
    for event in events:
        await publisher.publish(event)

    doomed = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "tests.runtime.events.crashing_consumer"),
        *(redis_url, str(db_path), "payments", "ledger"),
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    assert doomed.stdout is not None
    line = await asyncio.wait_for(doomed.stdout.readline(), timeout=30)
    assert await asyncio.wait_for(doomed.wait(), timeout=30) == -signal.SIGKILL
    first_applied = line.decode().split()[1]
    assert first_applied == events[0].id
    pending = await publisher.client.xpending("payments", "ledger")
    assert pending["pending"] == 5  # read in one batch, none acknowledged

    redelivered: list[str] = []
    all_done = asyncio.Event()

    async def survivor(event: Event) -> None:
        redelivered.append(event.id)
        await ledger.apply(event)
        if len(set(redelivered)) == len(events):
            all_done.set()

    bus = RedisStreamsEventBus.from_url(redis_url, claim_idle_ms=200, block_ms=50)
    await bus.subscribe("payments", group="ledger", consumer="survivor", handler=survivor)
    await asyncio.wait_for(all_done.wait(), timeout=30)
    await bus.close()

    assert sorted(redelivered) == sorted(e.id for e in events)
    assert await ledger.times_applied() == {e.id: 1 for e in events}
    assert (await publisher.client.xpending("payments", "ledger"))["pending"] == 0
    await publisher.close()
    await db.close()


async def test_an_event_that_keeps_failing_is_moved_to_the_dead_letter_stream(redis_url: str) -> None:
    bus = RedisStreamsEventBus.from_url(redis_url, claim_idle_ms=50, block_ms=20, max_deliveries=2)
    await bus.client.delete("invoices", "invoices.dead")
    attempts: list[str] = []

    async def always_fails(event: Event) -> None:
        attempts.append(event.id)
        raise RuntimeError("cannot apply")

    poison = Event(stream="invoices", type="invoice.issued", key="i-1")
    await bus.publish(poison)
    await bus.subscribe("invoices", group="billing", consumer="b1", handler=always_fails)

    async def dead_lettered() -> bool:
        return await bus.client.xlen("invoices.dead") == 1

    await wait_until(dead_lettered)
    [(_, fields)] = await bus.client.xrange("invoices.dead")
    assert fields is not None
    assert Event.from_json(fields[b"event"]) == poison
    assert attempts == [poison.id, poison.id]
    assert (await bus.client.xpending("invoices", "billing"))["pending"] == 0
    await bus.close()
