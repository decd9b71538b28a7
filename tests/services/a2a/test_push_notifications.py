"""A2A push notifications: stored per task, delivered at least once through the push outbox, never inside the network by
default."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest
from a2a.client import A2AClientError
from a2a.types import a2a_pb2
from aiohttp import web
from google.protobuf import json_format

from services.agent.a2a_push_policy import PushSettings
from tests.services.a2a.conftest import Issuer, StartSystem, card_for, sdk_client
from tests.services.a2a.test_a2a_service import (
    ASKER,
    READ,
    REVIEW,
    WRITE,
    grpc_code,
    message,
    returning_immediately,
    send,
)

TaskState = a2a_pb2.TaskState
# The test receiver listens on loopback, which the default policy refuses; retries come quickly.
LOOPBACK_PUSH = PushSettings.model_validate(
    {"allowed_networks": ["127.0.0.0/8"], "initial_backoff_s": 0.05, "max_backoff_s": 0.2}
)


@dataclass
class Receiver:
    """An agent's webhook: records every POST; answers 503 to the first one (a receiver restarting)."""

    url: str = ""
    posts: list[tuple[dict[str, str], a2a_pb2.StreamResponse, int]] = field(default_factory=list)
    completed: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        update = json_format.Parse(await request.text(), a2a_pb2.StreamResponse())
        status = 503 if not self.posts else 200
        self.posts.append((dict(request.headers), update, status))
        if status == 200 and update.status_update.status.state == TaskState.TASK_STATE_COMPLETED:
            self.completed.set()
        return web.Response(status=status)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    app = web.Application()
    app.router.add_post("/hooks/a2a", found.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    found.url = f"http://127.0.0.1:{port}/hooks/a2a"
    yield found
    await runner.cleanup()


def push_config(url: str) -> a2a_pb2.TaskPushNotificationConfig:
    return a2a_pb2.TaskPushNotificationConfig(
        url=url,
        token="task-token-1",
        authentication=a2a_pb2.AuthenticationInfo(scheme="Bearer", credentials="receiver-secret"),
    )


async def test_each_update_reaches_the_receiver_once_in_order_with_its_auth_header_after_a_failed_attempt(
    start_system: StartSystem, issuer: Issuer, receiver: Receiver
) -> None:
    system = await start_system(
        a2a_push=LOOPBACK_PUSH,
        decision_engine="tests.services.agent.engines:SlowEngine",
        decision_engine_options={"delay_s": 0.5},
    )
    client = sdk_client(card_for(system.gateway_address), streaming=False)
    asker = issuer.as_("alice", *ASKER)
    request = returning_immediately(message("How long do refunds take?"))
    request.configuration.task_push_notification_config.CopyFrom(push_config(receiver.url))

    task = await send(client, request, asker)
    await asyncio.wait_for(receiver.completed.wait(), 20)

    accepted = [(headers, update) for headers, update, status in receiver.posts if status == 200]
    ids = [headers["X-A2A-Notification-Id"] for headers, _ in accepted]
    assert len(ids) == len(set(ids)), "an update was delivered twice"
    # In log order: the refused first update was retried before any later one went out.
    assert ids[0] == receiver.posts[0][0]["X-A2A-Notification-Id"]
    assert all(h["Authorization"] == "Bearer receiver-secret" for h, _ in accepted)
    assert all(h["X-A2A-Notification-Token"] == "task-token-1" for h, _ in accepted)
    kinds = [u.WhichOneof("payload") for _, u in accepted]
    assert kinds[-2:] == ["artifact_update", "status_update"] and kinds.count("artifact_update") == 1
    assert {u.status_update.task_id or u.artifact_update.task_id for _, u in accepted} == {task.id}

    [stored] = (
        await client.list_task_push_notification_configs(
            a2a_pb2.ListTaskPushNotificationConfigsRequest(task_id=task.id), context=asker
        )
    ).configs
    assert (stored.url, stored.authentication.scheme, stored.authentication.credentials) == (receiver.url, "Bearer", "")


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:9/hook", "http://localhost:9/hook", "http://169.254.169.254/latest", "http://10.1.2.3/hook"],
)
async def test_under_the_default_policy_loopback_private_and_link_local_push_urls_are_refused(
    start_system: StartSystem, issuer: Issuer, url: str
) -> None:
    system = await start_system()
    client = sdk_client(card_for(system.gateway_address), streaming=False)
    asker = issuer.as_("alice", *ASKER)
    task = await send(client, returning_immediately(message("How long do refunds take?")), asker)

    config = push_config(url)
    config.task_id = task.id
    with pytest.raises(A2AClientError) as refused:
        await client.create_task_push_notification_config(config, context=asker)

    assert grpc_code(refused.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert "allowed_networks" in str(refused.value)
    request = message("How long do refunds take?")
    request.configuration.task_push_notification_config.CopyFrom(push_config(url))
    with pytest.raises(A2AClientError):
        await send(client, request, asker)
    # Had the refused message made a task, its message id would now be taken (another text: refused).
    request.message.parts[0].text = "Where is my parcel?"
    request.configuration.ClearField("task_push_notification_config")
    assert (await send(client, returning_immediately(request), asker)).id != task.id


async def test_a_reviewers_reply_that_carries_a_push_config_has_the_outcome_pushed(
    start_system: StartSystem, issuer: Issuer, receiver: Receiver
) -> None:
    system = await start_system(a2a_push=LOOPBACK_PUSH)
    client = sdk_client(card_for(system.gateway_address), streaming=False)
    task = await send(client, message("How often do passwords rotate?"), issuer.as_("alice", *ASKER))
    assert task.status.state == TaskState.TASK_STATE_INPUT_REQUIRED  # the task had no config until now

    reply = message("approve: matches the policy", task_id=task.id)
    reply.configuration.task_push_notification_config.CopyFrom(push_config(receiver.url))
    with pytest.raises(A2AClientError) as refused:  # the asker may not review: nothing applied, no config kept
        await send(client, reply, issuer.as_("alice", *ASKER))
    assert grpc_code(refused.value) == grpc.StatusCode.PERMISSION_DENIED
    listed = await client.list_task_push_notification_configs(
        a2a_pb2.ListTaskPushNotificationConfigsRequest(task_id=task.id), context=issuer.as_("alice", *ASKER)
    )
    assert not listed.configs
    approved = await send(client, reply, issuer.as_("rita", READ, WRITE, REVIEW))

    # The reply's transition commits before its config is stored; it is pushed all the same.
    assert approved.status.state == TaskState.TASK_STATE_COMPLETED
    await asyncio.wait_for(receiver.completed.wait(), 20)
    kinds = [update.WhichOneof("payload") for _, update, status in receiver.posts if status == 200]
    assert kinds == ["artifact_update", "status_update"]
