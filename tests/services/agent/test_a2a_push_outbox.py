"""The A2A push outbox on both backends: two replicas deliver each update once, in log order, and give up when told."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from a2a.types import a2a_pb2
from aiohttp import web

from runtime.events.bus import Event
from services.agent.a2a_push import PushNotifications
from services.agent.a2a_push_policy import PushSettings
from services.agent.run_store import event_from_run_event
from services.agent.state_machine import RunState
from tests.services.agent.conftest import Stores

LOOPBACK_ALLOWED = PushSettings.model_validate(
    {"allowed_networks": ["127.0.0.0/8"], "initial_backoff_s": 0.01, "max_backoff_s": 0.01, "max_attempts": 3}
)


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[tuple[str, int]], list[int]]]:
    """A webhook's URL, the (notification id, status) it answered, and the statuses to answer next."""
    seen: list[tuple[str, int]] = []
    script: list[int] = []

    async def handle(request: web.Request) -> web.Response:
        status = script.pop(0) if script else 200
        seen.append((request.headers["X-A2A-Notification-Id"], status))
        return web.Response(status=status)

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/hook", seen, script
    await runner.cleanup()


async def _completed_run_events(stores: Stores, push: PushNotifications, url: str) -> list[Event]:
    run, _ = await stores.runs.create(question="How long do refunds take?")
    config = a2a_pb2.TaskPushNotificationConfig(task_id=run.run_id, url=url)
    await push.save(config, creator="alice")
    await stores.runs.transition(run.run_id, RunState.COMPLETED, cause="answered", answer="5 business days")
    return [event_from_run_event(e) for e in await stores.runs.events(run_id=run.run_id)]


async def _drain(replicas: list[PushNotifications]) -> None:
    async with aiohttp.ClientSession() as session:
        while await replicas[0].pending():
            await asyncio.gather(*(replica.deliver_once(session) for replica in replicas))
            await asyncio.sleep(0.02)  # let a backed-off row come due


async def test_two_replicas_and_a_redelivered_event_send_each_update_once_in_order(
    stores: Stores, receiver: tuple[str, list[tuple[str, int]], list[int]]
) -> None:
    url, seen, script = receiver
    first, second = PushNotifications(stores.db, LOOPBACK_ALLOWED), PushNotifications(stores.db, LOOPBACK_ALLOWED)
    await first.create_schema()
    events = await _completed_run_events(stores, first, url)
    script.append(503)  # the first attempt fails: it must be retried before anything after it

    for event in events:  # the bus delivers at least once: both replicas' consumers may see an event
        await first.enqueue(event)
        await second.enqueue(event)
    await _drain([first, second])

    accepted = [notification for notification, status in seen if status == 200]
    assert len(accepted) == len(set(accepted)) == 3  # PROCESSING status, answer artifact, COMPLETED status
    assert accepted[0] == seen[0][0]
    assert accepted == sorted(accepted, key=lambda n: ([e.id for e in events].index(n.split(".")[0]), n))


async def test_a_destination_that_keeps_failing_is_abandoned_after_max_attempts(
    stores: Stores, receiver: tuple[str, list[tuple[str, int]], list[int]]
) -> None:
    url, seen, script = receiver
    push = PushNotifications(stores.db, LOOPBACK_ALLOWED)
    await push.create_schema()
    script.extend([500] * 10)
    for event in await _completed_run_events(stores, push, url):
        await push.enqueue(event)

    await _drain([push])

    # The first update is tried max_attempts times, then abandoned; the rest follow it, each tried 3 times too.
    assert [status for _, status in seen] == [500] * 9
    assert len({notification for notification, _ in seen}) == 3
