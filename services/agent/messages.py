"""Domain runs and events to and from their protobuf messages (the wire contract)."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from agentmesh.agent.v1 import run_pb2
from agentmesh.common.v1 import citation_pb2
from services.agent.model import Run, RunEvent
from services.agent.state_machine import RunState

_TO_PROTO: dict[RunState, run_pb2.Run.State.ValueType] = {
    RunState.IDLE: run_pb2.Run.STATE_IDLE,
    RunState.PROCESSING: run_pb2.Run.STATE_PROCESSING,
    RunState.WAITING_FOR_REVIEW: run_pb2.Run.STATE_WAITING_FOR_REVIEW,
    RunState.COMPLETED: run_pb2.Run.STATE_COMPLETED,
    RunState.FAILED: run_pb2.Run.STATE_FAILED,
    RunState.CANCELLED: run_pb2.Run.STATE_CANCELLED,
}
_FROM_PROTO = {value: key for key, value in _TO_PROTO.items()}


def state_to_proto(state: RunState | None) -> run_pb2.Run.State.ValueType:
    return _TO_PROTO[state] if state is not None else run_pb2.Run.STATE_UNSPECIFIED


def state_from_proto(state: run_pb2.Run.State.ValueType) -> RunState | None:
    """None for STATE_UNSPECIFIED (no filter)."""
    return _FROM_PROTO.get(state)


def proto_state_name(state: RunState) -> str:
    return run_pb2.Run.State.Name(_TO_PROTO[state])


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(round(seconds * 1e9))
    return stamp


def run_to_proto(run: Run) -> run_pb2.Run:
    return run_pb2.Run(
        run_id=run.run_id,
        question=run.question,
        state=state_to_proto(run.state),
        answer=run.answer,
        citations=[
            citation_pb2.Citation(
                document_id=c.document_id,
                chunk_id=c.chunk_id,
                start_offset=c.start_offset,
                end_offset=c.end_offset,
                quote=c.quote,
                score=c.score,
            )
            for c in run.citations
        ],
        status_reason=run.status_reason,
        decided_by=run.decided_by,
        labels=dict(run.labels),
        retrieval_filter=dict(run.retrieval_filter),
        request_id=run.request_id,
        create_time=_timestamp(run.create_time),
        update_time=_timestamp(run.update_time),
        creator=run.creator,
    )


def event_to_proto(event: RunEvent) -> run_pb2.RunEvent:
    return run_pb2.RunEvent(
        sequence=event.sequence,
        event_id=event.event_id,
        run_id=event.run_id,
        type=event.type,
        from_state=state_to_proto(event.from_state),
        to_state=state_to_proto(event.to_state),
        cause=event.cause,
        create_time=_timestamp(event.create_time),
    )
