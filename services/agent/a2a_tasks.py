"""Runs as A2A tasks: the one mapping between the run model and `lf.a2a.v1` (docs/a2a.md has it as a table).

A task is a run (``Task.id`` is the run id), so a run started over A2A is visible to
AgentService and the other way round. What A2A adds is kept on the run itself, in the same
transaction that creates it: the context id in a label, the message id as the AIP-155 request
id (prefixed, so it never collides with a CreateRun request id of the same caller).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterator
from dataclasses import asdict

from a2a.types import a2a_pb2
from google.protobuf import json_format, struct_pb2, timestamp_pb2

from services.agent.model import EventType, Run, RunEvent
from services.agent.state_machine import RunState

CONTEXT_LABEL = "a2a-context-id"
REQUEST_ID_PREFIX = "a2a-"
ANSWER_ARTIFACT_ID = "answer"
_PLAIN_MESSAGE_ID = re.compile(r"^[A-Za-z0-9_-]{1,60}$")
_CONTEXT_NAMESPACE = uuid.UUID("6f1c5d0e-3b7a-4f0e-9a59-0f0d6c2a2a01")

TASK_STATE: dict[RunState, a2a_pb2.TaskState] = {
    RunState.IDLE: a2a_pb2.TASK_STATE_SUBMITTED,
    RunState.PROCESSING: a2a_pb2.TASK_STATE_WORKING,
    RunState.WAITING_FOR_REVIEW: a2a_pb2.TASK_STATE_INPUT_REQUIRED,
    RunState.COMPLETED: a2a_pb2.TASK_STATE_COMPLETED,
    RunState.FAILED: a2a_pb2.TASK_STATE_FAILED,
    RunState.CANCELLED: a2a_pb2.TASK_STATE_CANCELED,
}
RUN_STATE = {task_state: run_state for run_state, task_state in TASK_STATE.items()}
# A stream or a blocking SendMessage ends at these: terminal, or interrupted until the caller acts.
SETTLED = frozenset({RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED, RunState.WAITING_FOR_REVIEW})

REVIEW_HINT = (
    "A reviewer must approve or reject this answer: reply to this task with a message whose text"
    " starts with 'approve' or 'reject' (the rest is the comment), or whose data part is"
    ' {"decision": "approve" | "reject", "comment": "..."}.'
)


def request_id_for(message_id: str) -> str:
    """The run's AIP-155 request id for an A2A message id (any string the caller chose)."""
    if _PLAIN_MESSAGE_ID.match(message_id):
        return REQUEST_ID_PREFIX + message_id
    return REQUEST_ID_PREFIX + hashlib.sha256(message_id.encode()).hexdigest()[:60]


def default_context_id(creator: str, message_id: str) -> str:
    """The context of a task started without one: derived, so a retried message gets the same."""
    return str(uuid.uuid5(_CONTEXT_NAMESPACE, f"{creator}\x00{message_id}"))


def context_of(run: Run) -> str:
    return run.labels.get(CONTEXT_LABEL, "")


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(round(seconds * 1e9))
    return stamp


def _agent_message(run: Run, text: str) -> a2a_pb2.Message:
    return a2a_pb2.Message(
        # Stable per run version: a status read twice carries the same message.
        message_id=f"{run.run_id}-v{run.version}",
        context_id=context_of(run),
        task_id=run.run_id,
        role=a2a_pb2.ROLE_AGENT,
        parts=[a2a_pb2.Part(text=text, media_type="text/plain")],
    )


def status_of(run: Run, *, note: str = "") -> a2a_pb2.TaskStatus:
    """The task status; its message says what the caller needs to know (why it stopped, what to do)."""
    status = a2a_pb2.TaskStatus(state=TASK_STATE[run.state], timestamp=_timestamp(run.update_time))
    if run.state is RunState.WAITING_FOR_REVIEW:
        text = f"{run.status_reason}\n\nProposed answer: {run.answer}\n\n{REVIEW_HINT}".lstrip()
    elif run.state in (RunState.FAILED, RunState.CANCELLED):
        text = run.status_reason
    else:
        text = note
    if text:
        status.message.CopyFrom(_agent_message(run, text))
    return status


def answer_artifact(run: Run) -> a2a_pb2.Artifact:
    """The answer as text, and its citations as one structured data part."""
    citations = struct_pb2.Value()
    json_format.ParseDict({"citations": [asdict(c) for c in run.citations]}, citations)
    return a2a_pb2.Artifact(
        artifact_id=ANSWER_ARTIFACT_ID,
        name="answer",
        description="The answer, grounded in the knowledge base, and the passages that support it.",
        parts=[
            a2a_pb2.Part(text=run.answer, media_type="text/plain"),
            a2a_pb2.Part(data=citations, media_type="application/json"),
        ],
    )


def user_message(run: Run) -> a2a_pb2.Message:
    """The message that started the task (or, for a run created by CreateRun, its question)."""
    message_id = run.request_id.removeprefix(REQUEST_ID_PREFIX) if run.request_id else run.run_id
    return a2a_pb2.Message(
        message_id=message_id,
        context_id=context_of(run),
        task_id=run.run_id,
        role=a2a_pb2.ROLE_USER,
        parts=[a2a_pb2.Part(text=run.question)],
    )


def task_of(run: Run, *, history_length: int | None = None, include_artifacts: bool = True) -> a2a_pb2.Task:
    task = a2a_pb2.Task(id=run.run_id, context_id=context_of(run), status=status_of(run))
    if include_artifacts and run.state is RunState.COMPLETED:
        task.artifacts.append(answer_artifact(run))
    if history_length is None or history_length > 0:
        task.history.append(user_message(run))
    if run.decided_by:
        task.metadata.update({"decided_by": run.decided_by})
    return task


def stream_events(event: RunEvent) -> Iterator[a2a_pb2.TaskStatusUpdateEvent | a2a_pb2.TaskArtifactUpdateEvent]:
    """What one log entry tells a streaming A2A client: state changes and progress, the answer before COMPLETED."""
    run = event.run
    context_id = context_of(run)
    if event.type == EventType.STATE_CHANGED:
        if run.state is RunState.COMPLETED:
            yield a2a_pb2.TaskArtifactUpdateEvent(
                task_id=run.run_id, context_id=context_id, artifact=answer_artifact(run), last_chunk=True
            )
        yield a2a_pb2.TaskStatusUpdateEvent(task_id=run.run_id, context_id=context_id, status=status_of(run))
    elif event.type == EventType.STEP_COMPLETED and run.state is RunState.PROCESSING:
        yield a2a_pb2.TaskStatusUpdateEvent(
            task_id=run.run_id, context_id=context_id, status=status_of(run, note=event.cause)
        )
    # run.created is the Task a stream starts with; compensations follow a terminal state, after the stream.
