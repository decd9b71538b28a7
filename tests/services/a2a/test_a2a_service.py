"""A2A over gRPC through the gateway, spoken by a2a-sdk's own client: tasks are runs."""

from __future__ import annotations

import uuid

import grpc
import pytest
from a2a.client import A2AClientError, Client
from a2a.types import a2a_pb2
from a2a.utils.errors import TaskNotCancelableError, UnsupportedOperationError
from google.protobuf import json_format

from tests.services.a2a.conftest import READ, REVIEW, WRITE, Issuer, StartSystem, card_for, sdk_client
from tests.system import wait_until

TaskState = a2a_pb2.TaskState
ASKER = ("runs.write", "runs.read", "documents.read")  # the agent searches RAG with the caller's token


def message(text: str, *, message_id: str | None = None, task_id: str = "") -> a2a_pb2.SendMessageRequest:
    return a2a_pb2.SendMessageRequest(
        message=a2a_pb2.Message(
            message_id=message_id or str(uuid.uuid4()),
            role=a2a_pb2.ROLE_USER,
            task_id=task_id,
            parts=[a2a_pb2.Part(text=text)],
        )
    )


def returning_immediately(request: a2a_pb2.SendMessageRequest) -> a2a_pb2.SendMessageRequest:
    request.configuration.return_immediately = True
    return request


async def send(client: Client, request: a2a_pb2.SendMessageRequest, context: object) -> a2a_pb2.Task:
    """A non-streaming send: the SDK yields the one response, a Task."""
    responses = [response async for response in client.send_message(request, context=context)]  # type: ignore[arg-type]
    assert len(responses) == 1 and responses[0].HasField("task")
    return responses[0].task


def grpc_code(error: BaseException) -> grpc.StatusCode:
    cause = error.__cause__
    assert isinstance(cause, grpc.aio.AioRpcError), error
    return cause.code()


async def test_a_blocking_message_returns_the_completed_task_with_the_answer_and_its_citations(
    start_system: StartSystem, issuer: Issuer
) -> None:
    system = await start_system()
    client = sdk_client(card_for(system.gateway_address), streaming=False)
    asker = issuer.as_("alice", *ASKER)

    task = await send(client, message("How long do refunds take?"), asker)

    assert task.status.state == TaskState.TASK_STATE_COMPLETED
    assert task.id.startswith("run_") and task.context_id
    [artifact] = task.artifacts
    text, data = artifact.parts
    assert "5 business days" in text.text
    citations = json_format.MessageToDict(data.data)["citations"]
    assert citations[0]["document_id"] == "refund-policy"
    assert task.history[0].parts[0].text == "How long do refunds take?"
    fetched = await client.get_task(a2a_pb2.GetTaskRequest(id=task.id), context=asker)
    assert fetched == task


async def test_the_same_message_id_twice_is_one_task_and_with_another_text_is_invalid_argument(
    start_system: StartSystem, issuer: Issuer
) -> None:
    system = await start_system()
    client = sdk_client(card_for(system.gateway_address), streaming=False)
    asker = issuer.as_("alice", *ASKER)
    message_id = str(uuid.uuid4())

    first = await send(
        client, returning_immediately(message("How long do refunds take?", message_id=message_id)), asker
    )
    again = await send(client, message("How long do refunds take?", message_id=message_id), asker)

    assert again.id == first.id and again.context_id == first.context_id
    assert again.status.state == TaskState.TASK_STATE_COMPLETED
    with pytest.raises(A2AClientError) as refused:
        await send(client, message("Where is my parcel?", message_id=message_id), asker)
    assert grpc_code(refused.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert "message.message_id" in str(refused.value)
    # Message ids are per caller: another caller's same id is another task.
    other = await send(client, message("How long do refunds take?", message_id=message_id), issuer.as_("bob", *ASKER))
    assert other.id != first.id


async def test_return_immediately_answers_at_once_and_the_task_is_listed_and_streamed_to_completion(
    start_system: StartSystem, issuer: Issuer
) -> None:
    system = await start_system(
        decision_engine="tests.services.agent.engines:SlowEngine", decision_engine_options={"delay_s": 0.5}
    )
    client = sdk_client(card_for(system.gateway_address), streaming=False)
    asker = issuer.as_("alice", *ASKER)

    task = await send(client, returning_immediately(message("How long do refunds take?")), asker)
    assert task.status.state == TaskState.TASK_STATE_WORKING

    streaming = sdk_client(card_for(system.gateway_address), streaming=True)
    updates = [u async for u in streaming.subscribe(a2a_pb2.SubscribeToTaskRequest(id=task.id), context=asker)]
    assert updates[0].task.id == task.id
    assert updates[-2].artifact_update.artifact.parts[0].text
    assert updates[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED

    # ListTasks reads the run projection, which follows the event log within moments (as ListRuns).
    async def listed_as_completed() -> bool:
        page = await client.list_tasks(
            a2a_pb2.ListTasksRequest(status=TaskState.TASK_STATE_COMPLETED, page_size=10, include_artifacts=True),
            context=asker,
        )
        return [t.id for t in page.tasks] == [task.id] and page.total_size == 1 and not page.next_page_token

    await wait_until(listed_as_completed)
    everything = await client.list_tasks(a2a_pb2.ListTasksRequest(), context=asker)
    assert [t.id for t in everything.tasks] == [task.id] and not everything.tasks[0].artifacts


async def test_a_streamed_message_yields_the_task_then_progress_the_answer_and_completed(
    start_system: StartSystem, issuer: Issuer
) -> None:
    system = await start_system()
    client = sdk_client(card_for(system.gateway_address), streaming=True)

    stream = [
        u async for u in client.send_message(message("How long do refunds take?"), context=issuer.as_("alice", *ASKER))
    ]

    kinds = [u.WhichOneof("payload") for u in stream]
    assert kinds[0] == "task" and kinds[-2:] == ["artifact_update", "status_update"]
    assert set(kinds[1:-2]) <= {"status_update"}
    working = [u.status_update.status for u in stream[1:-2]]
    assert working and all(s.state == TaskState.TASK_STATE_WORKING for s in working)
    assert any(s.message.parts[0].text.startswith("retrieve") for s in working)
    assert "5 business days" in stream[-2].artifact_update.artifact.parts[0].text
    assert stream[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED
    assert {u.status_update.task_id for u in stream[1:]} - {""} == {stream[0].task.id}


async def test_an_input_required_task_is_approved_by_a_reviewers_reply_and_not_by_anyone_elses(
    start_system: StartSystem, issuer: Issuer
) -> None:
    system = await start_system()
    client = sdk_client(card_for(system.gateway_address), streaming=False)
    asker = issuer.as_("alice", *ASKER)

    task = await send(client, message("How often do passwords rotate?"), asker)
    assert task.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
    assert "approve" in task.status.message.parts[0].text and not task.artifacts

    with pytest.raises(A2AClientError) as refused:
        await send(client, message("approve", task_id=task.id), asker)
    assert grpc_code(refused.value) == grpc.StatusCode.PERMISSION_DENIED
    reviewer = issuer.as_("rita", READ, WRITE, REVIEW)
    with pytest.raises(A2AClientError) as unclear:
        await send(client, message("looks fine", task_id=task.id), reviewer)
    assert grpc_code(unclear.value) == grpc.StatusCode.INVALID_ARGUMENT

    reply = message("approve: matches the policy", task_id=task.id)
    approved = await send(client, reply, reviewer)
    assert approved.id == task.id and approved.status.state == TaskState.TASK_STATE_COMPLETED
    assert "90 days" in approved.artifacts[0].parts[0].text
    # The same reply retried returns the decided task; another message to it is refused by the protocol.
    assert await send(client, reply, reviewer) == approved
    with pytest.raises(UnsupportedOperationError):
        await send(client, message("reject", task_id=task.id), reviewer)


async def test_a_rejected_reply_fails_the_task(start_system: StartSystem, issuer: Issuer) -> None:
    system = await start_system()
    client = sdk_client(card_for(system.gateway_address), streaming=False)
    task = await send(client, message("How often do passwords rotate?"), issuer.as_("alice", *ASKER))
    assert task.status.state == TaskState.TASK_STATE_INPUT_REQUIRED

    rejected = await send(client, message("reject outdated", task_id=task.id), issuer.as_("rita", WRITE, REVIEW))

    assert rejected.status.state == TaskState.TASK_STATE_FAILED
    assert rejected.status.message.parts[0].text == "outdated"


async def test_cancelling_a_working_task_cancels_the_run_and_a_second_cancel_is_not_cancelable(
    start_system: StartSystem, issuer: Issuer
) -> None:
    system = await start_system(
        decision_engine="tests.services.agent.engines:SlowEngine", decision_engine_options={"delay_s": 30}
    )
    client = sdk_client(card_for(system.gateway_address), streaming=False)
    asker = issuer.as_("alice", *ASKER)
    task = await send(client, returning_immediately(message("How long do refunds take?")), asker)

    cancelled = await client.cancel_task(a2a_pb2.CancelTaskRequest(id=task.id), context=asker)

    assert cancelled.status.state == TaskState.TASK_STATE_CANCELED
    with pytest.raises(TaskNotCancelableError):
        await client.cancel_task(a2a_pb2.CancelTaskRequest(id=task.id), context=asker)
    streaming = sdk_client(card_for(system.gateway_address), streaming=True)
    with pytest.raises(UnsupportedOperationError):
        [u async for u in streaming.subscribe(a2a_pb2.SubscribeToTaskRequest(id=task.id), context=asker)]


async def test_without_a_token_or_the_scope_every_method_is_refused_and_the_extended_card_needs_a_token(
    start_system: StartSystem, issuer: Issuer
) -> None:
    system = await start_system()
    client = sdk_client(card_for(system.gateway_address), streaming=False)

    with pytest.raises(A2AClientError) as anonymous:
        await send(client, message("How long do refunds take?"), None)
    assert grpc_code(anonymous.value) == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(A2AClientError) as reader:
        await send(client, message("How long do refunds take?"), issuer.as_("rex", READ))
    assert grpc_code(reader.value) == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(A2AClientError) as no_card:
        await client.get_extended_agent_card(a2a_pb2.GetExtendedAgentCardRequest())
    assert grpc_code(no_card.value) == grpc.StatusCode.UNAUTHENTICATED

    extended = await client.get_extended_agent_card(
        a2a_pb2.GetExtendedAgentCardRequest(), context=issuer.as_("rex", READ)
    )
    assert {s.id for s in extended.skills} == {"answer-questions", "review-answers"}


@pytest.mark.postgres
async def test_on_two_replicas_one_message_is_one_task_and_either_replica_streams_it(
    postgres_url: str, start_system: StartSystem, issuer: Issuer
) -> None:
    # postgres_url first: the database outlives the servers using it.
    system = await start_system(
        replicas=2,
        database_url=postgres_url,
        decision_engine="tests.services.agent.engines:SlowEngine",
        decision_engine_options={"delay_s": 0.5},
    )
    second = sdk_client(card_for(system.agent_address(1)), streaming=True)
    asker = issuer.as_("alice", *ASKER)
    request = returning_immediately(message("How long do refunds take?"))

    created = await send(sdk_client(card_for(system.agent_address(0)), streaming=False), request, asker)
    updates = [u async for u in second.subscribe(a2a_pb2.SubscribeToTaskRequest(id=created.id), context=asker)]
    again = await send(sdk_client(card_for(system.agent_address(1)), streaming=False), request, asker)

    assert updates[0].task.id == created.id
    assert updates[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED
    assert again.id == created.id
