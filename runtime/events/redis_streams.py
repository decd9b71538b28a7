"""Redis Streams event bus: consumer groups, explicit XACK, and XAUTOCLAIM for dead consumers' events.

An event read by a consumer sits in the group's pending entries list until XACK. If that
consumer dies (or its handler keeps failing), the entry goes idle; after ``claim_idle``
another live consumer of the group takes it over with XAUTOCLAIM and handles it again.
Entries delivered ``max_deliveries`` times are copied to ``<stream>.dead`` and acknowledged,
so one poison event cannot block a group forever.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as redis
import structlog
from redis.exceptions import ResponseError

from runtime.backoff import Backoff
from runtime.events.bus import Event, Handler, Subscription
from runtime.supervisor import Outage, SupervisedLoop

log = structlog.get_logger(__name__)

_FIELD = "event"

_Entries = list[tuple[str, dict[Any, Any]]]
_REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _Consumer:
    def __init__(
        self,
        bus: RedisStreamsEventBus,
        stream: str,
        group: str,
        consumer: str,
        handler: Handler,
    ) -> None:
        self._bus = bus
        self._stream = stream
        self._group = group
        self._consumer = consumer
        self._handler = handler
        self._stopping = False
        self._loop = SupervisedLoop(
            f"events:{stream}:{group}:{consumer}",
            self._consume,
            backoff=Backoff(initial=bus.retry_delay, maximum=max(bus.retry_delay, 10.0)),
            outage=Outage(_REDIS_DOWN, "redis unavailable; consumer retrying", self._where),
        )

    def start(self) -> None:
        self._loop.start()

    async def close(self) -> None:
        """Stop after the current read: cancelling a blocked XREADGROUP would break its connection."""
        self._stopping = True
        await self._loop.stop(grace_s=self._bus.block_ms / 1000 + 5.0)

    def _where(self, _error: Exception) -> dict[str, str]:
        return {"stream": self._stream, "group": self._group}

    async def _consume(self) -> None:
        """One connection's worth of consuming; a lost connection is retried by the supervisor."""
        # A Redis that came back empty (no persistence, a failover to a fresh replica) has no group.
        await self._bus.create_group(self._stream, self._group)
        # Entries this consumer name read before (in a previous life, or before the connection
        # dropped) but never acknowledged come first.
        after = "0"
        while not self._stopping and (entries := await self._read(after)):
            await self._handle_all(entries)
            after = entries[-1][0]
        while not self._stopping:
            try:
                await self._claim_stale()
                await self._handle_all(await self._read(">", block_ms=self._bus.block_ms))
            except ResponseError as error:
                if "NOGROUP" not in str(error):
                    raise
                # The stream or group was deleted under us (FLUSHDB, a trim job): recreate it and go on.
                log.warning("consumer group vanished; recreating it", stream=self._stream, group=self._group)
                await self._bus.create_group(self._stream, self._group)
            else:
                self._loop.mark_healthy()

    async def _read(self, start: str, *, block_ms: int | None = None) -> _Entries:
        response = await self._bus.client.xreadgroup(
            self._group, self._consumer, {self._stream: start}, count=self._bus.batch_size, block=block_ms
        )
        # Legacy replies are [[stream, entries]], unified ones {stream: entries}.
        per_stream: Any = response.items() if isinstance(response, dict) else response or []
        entries: _Entries = []
        for _stream, stream_entries in per_stream:
            for entry_id, fields in stream_entries:
                if fields:
                    entries.append((_text(entry_id), fields))
                else:
                    # Trimmed from the stream while pending: nothing left to deliver.
                    await self._bus.client.xack(self._stream, self._group, entry_id)
        return entries

    async def _claim_stale(self) -> None:
        start = "0-0"
        while True:
            next_start, claimed, *_deleted = await self._bus.client.xautoclaim(
                self._stream,
                self._group,
                self._consumer,
                self._bus.claim_idle_ms,
                start_id=start,
                count=self._bus.batch_size,
            )
            entries = [(_text(entry_id), fields) for entry_id, fields in claimed if fields]
            if entries:
                log.info(
                    "claimed events of an idle consumer",
                    stream=self._stream,
                    group=self._group,
                    count=len(entries),
                )
                await self._handle_all(await self._drop_exhausted(entries))
            start = _text(next_start)
            if start == "0-0":
                return

    async def _drop_exhausted(self, entries: _Entries) -> _Entries:
        ids = [entry_id for entry_id, _ in entries]
        pending = await self._bus.client.xpending_range(
            self._stream, self._group, min=ids[0], max=ids[-1], count=len(ids) * 2
        )
        deliveries = {_text(p["message_id"]): int(p["times_delivered"]) for p in pending}
        keep = []
        for entry_id, fields in entries:
            if deliveries.get(entry_id, 0) > self._bus.max_deliveries:
                log.error("event dead-lettered", stream=self._stream, group=self._group, entry_id=entry_id)
                await self._bus.client.xadd(f"{self._stream}.dead", {_FIELD: fields[self._field_key(fields)]})
                await self._bus.client.xack(self._stream, self._group, entry_id)
            else:
                keep.append((entry_id, fields))
        return keep

    @staticmethod
    def _field_key(fields: dict[Any, Any]) -> Any:
        return _FIELD if _FIELD in fields else _FIELD.encode()

    async def _handle_all(self, entries: _Entries) -> None:
        for entry_id, fields in entries:
            if self._stopping:
                return  # the rest stay pending and go to the next consumer
            event = Event.from_json(fields[self._field_key(fields)])
            try:
                await self._handler(event)
            except Exception:
                # Left pending: XAUTOCLAIM hands it out again once it has been idle long enough.
                log.warning(
                    "event handler failed; left pending for redelivery",
                    event_id=event.id,
                    entry_id=entry_id,
                    exc_info=True,
                )
                continue
            await self._bus.client.xack(self._stream, self._group, entry_id)


class RedisStreamsEventBus:
    """``EventBus`` on Redis Streams (Redis >= 6.2 for XAUTOCLAIM).

    A consumer that loses Redis retries after ``retry_delay``, doubling up to 10 s while it stays down.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        maxlen: int = 100_000,
        batch_size: int = 64,
        block_ms: int = 1000,
        claim_idle_ms: int = 30_000,
        max_deliveries: int = 5,
        retry_delay: float = 1.0,
    ) -> None:
        self.client = client
        self.maxlen = maxlen
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.max_deliveries = max_deliveries
        self.retry_delay = retry_delay
        self._consumers: list[_Consumer] = []

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisStreamsEventBus:
        return cls(redis.Redis.from_url(url), **options)

    async def publish(self, event: Event) -> None:
        # Approximate trimming (~) lets Redis drop whole macro-nodes, which is far cheaper than exact.
        await self.client.xadd(event.stream, {_FIELD: event.to_json()}, maxlen=self.maxlen, approximate=True)

    async def create_group(self, stream: str, group: str) -> None:
        try:
            # id=0: a new group starts from the oldest retained event, like the in-process bus.
            await self.client.xgroup_create(stream, group, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    async def subscribe(self, stream: str, *, group: str, consumer: str, handler: Handler) -> Subscription:
        await self.create_group(stream, group)
        subscription = _Consumer(self, stream, group, consumer, handler)
        subscription.start()
        self._consumers.append(subscription)
        return subscription

    async def close(self) -> None:
        consumers, self._consumers = self._consumers, []
        for consumer in consumers:
            await consumer.close()
        await self.client.aclose()
