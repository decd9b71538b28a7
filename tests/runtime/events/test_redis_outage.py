"""Redis Streams: a consumer that loses Redis keeps retrying under its supervisor and consumes
again once Redis is back, with no restart of the service."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from yarl import URL

from runtime.events.bus import Event
from runtime.events.redis_streams import RedisStreamsEventBus
from tests.runtime.events.redis_server import redis_server
from tests.runtime.log_events import log_events

pytestmark = pytest.mark.redis


async def test_a_consumer_outlives_a_redis_restart_and_consumes_new_events(tmp_path: Path) -> None:
    received: list[str] = []
    arrived = asyncio.Event()

    async def handle(event: Event) -> None:
        received.append(event.key)
        arrived.set()

    with log_events() as logs:
        with redis_server(tmp_path / "first") as url:
            port = URL(url).port
            bus = RedisStreamsEventBus.from_url(url, block_ms=50, retry_delay=0.05)
            await bus.subscribe("payments", group="ledger", consumer="ledger-1", handler=handle)
            await bus.publish(Event(stream="payments", type="payment.captured", key="before"))
            await asyncio.wait_for(arrived.wait(), 10)
        try:
            outage = await logs.wait_for("redis unavailable; consumer retrying")
            assert outage["stream"] == "payments" and outage["group"] == "ledger"
            # Redis comes back empty (no persistence): the consumer recreates its group and goes on.
            with redis_server(tmp_path / "second", port=port) as url:
                await logs.wait_for("background loop recovered", within=20)
                arrived.clear()
                publisher = RedisStreamsEventBus.from_url(url)
                await publisher.publish(Event(stream="payments", type="payment.captured", key="after"))
                await publisher.close()
                await asyncio.wait_for(arrived.wait(), 10)
                assert received == ["before", "after"]
                await bus.close()
        finally:
            await bus.close()
