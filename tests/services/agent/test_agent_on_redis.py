"""The agent service with the Redis Streams event bus: run events reach their consumers through a consumer group.

(The read model follows the event log itself; the bus carries the events to the other consumers.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as redis

from agentmesh.agent.v1 import agent_service_pb2 as agent_pb
from agentmesh.agent.v1 import run_pb2
from services.agent.a2a_push import PUSH_GROUP
from services.agent.run_store import RUN_EVENTS_STREAM
from tests.services.agent.runs import settled_run
from tests.services.agent.test_agent_service import agent_service
from tests.system import wait_until

pytestmark = pytest.mark.redis


async def test_run_events_flow_through_redis_streams_to_their_consumers(tmp_path: Path, redis_url: str) -> None:
    async with agent_service(tmp_path, event_bus="redis", redis_url=redis_url, instance_id="agent-1") as agent:
        created = (await agent.CreateRun(agent_pb.CreateRunRequest(question="How long do refunds take?"))).run
        run = await settled_run(agent, created.run_id)
        assert run.state == run_pb2.Run.STATE_COMPLETED

        events = [r.event async for r in agent.WatchRun(agent_pb.WatchRunRequest(run_id=run.run_id))]
        client = redis.Redis.from_url(redis_url)
        seen: dict[str, object] = {}

        async def all_acknowledged() -> bool:
            length = await client.xlen(RUN_EVENTS_STREAM)
            groups = {g["name"].decode(): g for g in await client.xinfo_groups(RUN_EVENTS_STREAM)}
            group = groups.get(PUSH_GROUP)
            seen.update(length=length, events=len(events), group=group)
            return (
                length == len(events)
                and group is not None
                and group["pending"] == 0
                and (group["last-delivered-id"] != b"0-0")
            )

        try:
            await wait_until(all_acknowledged)
        except TimeoutError:
            raise AssertionError(f"not every event published once and acknowledged: {seen}") from None
        finally:
            await client.aclose()
