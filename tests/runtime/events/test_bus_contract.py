"""The EventBus contract, run against every backend (in-process and Redis Streams)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

from runtime.events.bus import Event, EventBus
from runtime.events.dedup import deduplicate


class Recorder:
    """A handler that records what it handled and lets a test await a count."""

    def __init__(self, *, fail_first: int = 0, fail_always: bool = False, changed: asyncio.Event | None = None) -> None:
        self.handled: list[Event] = []
        self.attempts: Counter[str] = Counter()
        self._fail_first = fail_first
        self._fail_always = fail_always
        # Shared between recorders when a test waits on their combined progress.
        self._changed = changed or asyncio.Event()

    async def __call__(self, event: Event) -> None:
        self.attempts[event.id] += 1
        self._changed.set()
        if self._fail_always or self.attempts[event.id] <= self._fail_first:
            raise RuntimeError("handler failed on purpose")
        self.handled.append(event)

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(15):
            while not condition():
                self._changed.clear()
                await self._changed.wait()


def make_events(n: int, stream: str = "orders") -> list[Event]:
    return [Event(stream=stream, type="order.placed", key=f"order-{i}", data={"i": i}) for i in range(n)]


async def test_every_group_receives_every_event_in_order(bus: EventBus) -> None:
    billing, shipping = Recorder(), Recorder()
    await bus.subscribe("orders", group="billing", consumer="b1", handler=billing)
    await bus.subscribe("orders", group="shipping", consumer="s1", handler=shipping)
    events = make_events(5)
    for event in events:
        await bus.publish(event)

    await billing.wait_for(lambda: len(billing.handled) == 5)
    await shipping.wait_for(lambda: len(shipping.handled) == 5)
    assert [e.id for e in billing.handled] == [e.id for e in events]
    assert billing.handled == shipping.handled == events


async def test_consumers_in_one_group_share_the_work(bus: EventBus) -> None:
    changed = asyncio.Event()
    first, second = Recorder(changed=changed), Recorder(changed=changed)
    await bus.subscribe("orders", group="workers", consumer="w1", handler=first)
    await bus.subscribe("orders", group="workers", consumer="w2", handler=second)
    events = make_events(40)
    for event in events:
        await bus.publish(event)

    await first.wait_for(lambda: len(first.handled) + len(second.handled) == 40)
    handled_ids = [e.id for e in first.handled + second.handled]
    assert sorted(handled_ids) == sorted(e.id for e in events)


async def test_a_new_group_starts_from_the_oldest_retained_event(bus: EventBus) -> None:
    events = make_events(3)
    for event in events:
        await bus.publish(event)
    late = Recorder()
    await bus.subscribe("orders", group="late", consumer="l1", handler=late)

    await late.wait_for(lambda: len(late.handled) == 3)
    assert late.handled == events


async def test_a_failed_handler_gets_the_event_again_until_it_succeeds(bus: EventBus) -> None:
    flaky = Recorder(fail_first=2)
    await bus.subscribe("orders", group="flaky", consumer="f1", handler=flaky)
    [event] = make_events(1)
    await bus.publish(event)

    await flaky.wait_for(lambda: len(flaky.handled) == 1)
    assert flaky.attempts[event.id] == 3
    assert flaky.handled == [event]


async def test_an_event_that_always_fails_stops_after_max_deliveries(bus: EventBus) -> None:
    poison = Recorder(fail_always=True)
    healthy = Recorder()
    await bus.subscribe("orders", group="poisoned", consumer="p1", handler=poison)
    [bad] = make_events(1)
    await bus.publish(bad)
    await poison.wait_for(lambda: poison.attempts[bad.id] == 3)
    # The group keeps flowing: a later event is still delivered after the poison one gave up.
    await bus.subscribe("orders", group="healthy", consumer="h1", handler=healthy)
    [good] = make_events(1)
    await bus.publish(good)
    await healthy.wait_for(lambda: len(healthy.handled) == 2)
    await asyncio.sleep(0.5)  # room for a (wrong) extra redelivery to show up
    assert poison.attempts[bad.id] == 3


async def test_a_deduplicated_handler_applies_a_republished_event_once(bus: EventBus) -> None:
    recorder = Recorder()
    await bus.subscribe("orders", group="dedup", consumer="d1", handler=deduplicate(recorder))
    [event] = make_events(1)
    # The outbox republishes after a crash between publish and "mark sent": same id twice.
    await bus.publish(event)
    await bus.publish(event)
    [marker] = make_events(1)
    await bus.publish(marker)

    await recorder.wait_for(lambda: any(e.id == marker.id for e in recorder.handled))
    assert [e.id for e in recorder.handled] == [event.id, marker.id]
