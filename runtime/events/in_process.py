"""In-process event bus: the embedded default, same semantics as Redis Streams inside one process.

Each stream keeps a bounded history so a group that joins late still sees retained events;
each group has one queue that its consumers compete on. Nothing survives a restart: durability
comes from the outbox, which re-publishes anything not yet marked sent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass, field

import structlog

from runtime.events.bus import Event, Handler, Subscription

log = structlog.get_logger(__name__)


@dataclass
class _Delivery:
    event: Event
    attempt: int = 1


@dataclass
class _Group:
    queue: asyncio.Queue[_Delivery] = field(default_factory=asyncio.Queue)


@dataclass
class _Stream:
    history: deque[Event]
    groups: dict[str, _Group] = field(default_factory=dict)


class _Consumer:
    def __init__(self, task: asyncio.Task[None]) -> None:
        self._task = task

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class InProcessEventBus:
    """``EventBus`` backed by asyncio queues."""

    def __init__(self, *, retention: int = 10_000, redelivery_delay: float = 0.2, max_deliveries: int = 5) -> None:
        self._retention = retention
        self._redelivery_delay = redelivery_delay
        self._max_deliveries = max_deliveries
        self._streams: dict[str, _Stream] = {}
        self._consumers: set[_Consumer] = set()
        self._pending_redeliveries: set[asyncio.TimerHandle] = set()
        self.dead_letters: list[Event] = []

    def _stream(self, name: str) -> _Stream:
        if name not in self._streams:
            self._streams[name] = _Stream(history=deque(maxlen=self._retention))
        return self._streams[name]

    async def publish(self, event: Event) -> None:
        stream = self._stream(event.stream)
        stream.history.append(event)
        for group in stream.groups.values():
            group.queue.put_nowait(_Delivery(event))

    async def subscribe(self, stream: str, *, group: str, consumer: str, handler: Handler) -> Subscription:
        state = self._stream(stream)
        if group not in state.groups:
            state.groups[group] = _Group()
            for event in state.history:
                state.groups[group].queue.put_nowait(_Delivery(event))
        queue = state.groups[group].queue
        task = asyncio.create_task(self._consume(queue, handler), name=f"events:{stream}:{group}:{consumer}")
        subscription = _Consumer(task)
        self._consumers.add(subscription)
        return subscription

    async def _consume(self, queue: asyncio.Queue[_Delivery], handler: Handler) -> None:
        while True:
            delivery = await queue.get()
            try:
                await handler(delivery.event)
            except asyncio.CancelledError:
                # Not acknowledged: hand it to the next consumer of the group.
                queue.put_nowait(delivery)
                raise
            except Exception:
                self._retry_later(queue, delivery)

    def _retry_later(self, queue: asyncio.Queue[_Delivery], delivery: _Delivery) -> None:
        event = delivery.event
        if delivery.attempt >= self._max_deliveries:
            log.error("event dead-lettered", event_id=event.id, type=event.type, attempts=delivery.attempt)
            self.dead_letters.append(event)
            return
        log.warning("event handler failed; will redeliver", event_id=event.id, attempt=delivery.attempt, exc_info=True)
        retry = _Delivery(event, delivery.attempt + 1)

        def redeliver() -> None:
            self._pending_redeliveries.discard(timer)
            queue.put_nowait(retry)

        timer = asyncio.get_running_loop().call_later(self._redelivery_delay * delivery.attempt, redeliver)
        self._pending_redeliveries.add(timer)

    async def close(self) -> None:
        for timer in self._pending_redeliveries:
            timer.cancel()
        self._pending_redeliveries.clear()
        consumers, self._consumers = self._consumers, set()
        for consumer in consumers:
            await consumer.close()
