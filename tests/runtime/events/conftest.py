from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from runtime.events.bus import EventBus
from runtime.events.in_process import InProcessEventBus
from runtime.events.redis_streams import RedisStreamsEventBus
from tests.runtime.events.redis_server import redis_server


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(params=["in_process", pytest.param("redis", marks=pytest.mark.redis)])
async def bus(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventBus]:
    """Each bus contract test runs against both backends."""
    backend: EventBus
    if request.param == "in_process":
        backend = InProcessEventBus(redelivery_delay=0.05, max_deliveries=3)
    else:
        url = request.getfixturevalue("redis_url")
        # Short idle/block times so redelivery happens within the test, not after 30 s.
        backend = RedisStreamsEventBus.from_url(url, claim_idle_ms=100, block_ms=50, max_deliveries=3)
        await backend.client.flushdb()
    yield backend
    await backend.close()
