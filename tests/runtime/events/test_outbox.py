"""The transactional outbox: an event is published if and only if its transaction committed (on both backends)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runtime.database import Database, Migration, Schema, open_database
from runtime.events.bus import Event, Handler, Subscription
from runtime.events.in_process import InProcessEventBus
from runtime.events.outbox import Outbox

ORDERS = Schema("test.orders", (Migration(1, *(["CREATE TABLE orders (id TEXT PRIMARY KEY)"] * 2)),))


async def _open(url: str, path: Path) -> Database:
    return await open_database(url, sqlite_path=path, setting="TEST_DATABASE_URL")


@pytest.fixture
async def db(database_url: str, tmp_path: Path) -> AsyncIterator[Database]:
    database = await _open(database_url, tmp_path / "outbox.db")
    await database.migrate(ORDERS)
    yield database
    await database.close()


@pytest.fixture
async def outbox(db: Database) -> Outbox:
    box = Outbox(db)
    await box.create_schema()
    return box


class FlakyBus:
    """A bus whose publish fails while ``down`` is set (a broker outage)."""

    def __init__(self) -> None:
        self.down = True
        self.published: list[Event] = []

    async def publish(self, event: Event) -> None:
        if self.down:
            raise ConnectionError("broker unavailable")
        self.published.append(event)

    async def subscribe(self, stream: str, *, group: str, consumer: str, handler: Handler) -> Subscription:
        raise NotImplementedError

    async def close(self) -> None:
        return None


def order_placed(order_id: str) -> Event:
    return Event(stream="orders", type="order.placed", key=order_id)


async def test_an_event_of_a_committed_transaction_is_published(db: Database, outbox: Outbox) -> None:
    bus = InProcessEventBus()
    received: asyncio.Queue[Event] = asyncio.Queue()
    await bus.subscribe("orders", group="g", consumer="c", handler=received.put)
    relay = asyncio.create_task(outbox.relay(bus, poll_interval=30))
    event = order_placed("o-1")

    async with db.transaction() as tx:
        await tx.execute("INSERT INTO orders (id) VALUES ('o-1')")
        await outbox.append(tx, event)

    # The commit itself wakes the relay; the 30 s poll interval is never reached.
    assert await asyncio.wait_for(received.get(), timeout=10) == event
    relay.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await relay
    await bus.close()


async def test_a_rolled_back_transaction_publishes_nothing(db: Database, outbox: Outbox) -> None:
    bus = FlakyBus()
    bus.down = False
    with pytest.raises(RuntimeError):
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO orders (id) VALUES ('o-2')")
            await outbox.append(tx, order_placed("o-2"))
            raise RuntimeError("business rule failed after the event was staged")

    assert await outbox.relay_once(bus) == 0
    assert bus.published == []
    assert await db.fetch_all("SELECT * FROM orders") == []


async def test_events_survive_a_broker_outage_and_are_published_once_in_order(db: Database, outbox: Outbox) -> None:
    bus = FlakyBus()
    events = [order_placed(f"o-{i}") for i in range(3)]
    for event in events:
        async with db.transaction() as tx:
            await outbox.append(tx, event)

    with pytest.raises(ConnectionError):
        await outbox.relay_once(bus)
    assert await outbox.pending_count() == 3

    bus.down = False
    assert await outbox.relay_once(bus) == 3
    assert await outbox.relay_once(bus) == 0
    assert bus.published == events


async def test_a_new_process_relays_what_a_crashed_one_left_behind(database_url: str, tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    first = await _open(database_url, path)
    staged = Outbox(first)
    await staged.create_schema()
    event = order_placed("o-9")
    async with first.transaction() as tx:
        await staged.append(tx, event)
    await first.close()  # "crashed" before relaying

    second = await _open(database_url, path)
    bus = FlakyBus()
    bus.down = False
    assert await Outbox(second).relay_once(bus) == 1
    assert bus.published == [event]
    await second.close()


async def test_sent_rows_are_pruned_after_the_retention(db: Database, outbox: Outbox) -> None:
    bus = FlakyBus()
    bus.down = False
    async with db.transaction() as tx:
        await outbox.append(tx, order_placed("o-3"))
    await outbox.relay_once(bus)

    assert await outbox.prune(older_than=3600) == 0
    assert await outbox.prune(older_than=-1) == 1


async def test_a_relay_cancelled_mid_flight_stops_instead_of_retrying(db: Database, outbox: Outbox) -> None:
    bus = FlakyBus()
    bus.down = False
    for i in range(30):
        async with db.transaction() as tx:
            await outbox.append(tx, order_placed(f"o-{i}"))
        relay = asyncio.create_task(outbox.relay(bus, poll_interval=30))
        for _ in range(i % 5):
            await asyncio.sleep(0)
        relay.cancel()
        # A cancellation swallowed as a "relay failure" would keep the task retrying forever.
        done, _ = await asyncio.wait({relay}, timeout=10)
        assert done and relay.cancelled()
    assert await outbox.relay_once(bus) >= 0
