"""The calls every scenario makes: one unary method and one server-streaming method, fixed sizes.

Every scenario sends the same bytes, so a ratio between two scenarios is the cost of what differs
between them (an interceptor, a hop), never of a different payload. `CreateRun` is the unary call
because it is the method idempotency keys are for; `WatchRun` is the streaming one.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentmesh.agent.v1 import agent_service_pb2, run_pb2

SERVICE = "agentmesh.agent.v1.AgentService"
UNARY_METHOD = f"/{SERVICE}/CreateRun"
STREAM_METHOD = f"/{SERVICE}/WatchRun"
EVENTS_PER_STREAM = 50

REQUEST = agent_service_pb2.CreateRunRequest(
    question="How long does a refund take when the order was paid by card and shipped abroad? " * 2,
    labels={"team": "billing", "channel": "bench"},
)
RUN_ID = "run-0123456789abcdef"
ANSWER = "Refunds are processed within 5 business days of the returned goods arriving at the warehouse. " * 3


def respond(request: agent_service_pb2.CreateRunRequest) -> agent_service_pb2.CreateRunResponse:
    """What the bench backend answers: built from the request, as a real handler would.

    No map fields: their wire order is not fixed, and clients check responses byte for byte.
    """
    return agent_service_pb2.CreateRunResponse(
        run=run_pb2.Run(
            run_id=RUN_ID,
            question=request.question,
            state=run_pb2.Run.STATE_COMPLETED,
            answer=ANSWER,
        )
    )


RESPONSE = respond(REQUEST)
STREAM_REQUEST = agent_service_pb2.WatchRunRequest(run_id=RUN_ID)
STREAM_EVENTS = tuple(
    agent_service_pb2.WatchRunResponse(
        event=run_pb2.RunEvent(
            sequence=n,
            event_id=f"evt-{n:08d}",
            run_id=RUN_ID,
            type="run.state_changed",
            from_state=run_pb2.Run.STATE_PROCESSING,
            to_state=run_pb2.Run.STATE_PROCESSING,
            cause="bench",
        )
    )
    for n in range(1, EVENTS_PER_STREAM + 1)
)


def grpc_frame_bytes(body: bytes) -> bytes:
    """A length-prefixed gRPC message: flag byte 0 (uncompressed), 4-byte big-endian length, body."""
    return b"\x00" + len(body).to_bytes(4, "big") + body


@dataclass(frozen=True, slots=True)
class Call:
    """One kind of call: its path, request bytes, and the response bytes a correct server sends."""

    kind: str  # "unary" | "stream"
    method: str
    request: bytes
    responses: tuple[bytes, ...]

    @property
    def response_frame_bytes(self) -> int:
        """DATA bytes of one successful call's response on the wire (frame prefixes included)."""
        return sum(5 + len(r) for r in self.responses)

    @property
    def messages_per_call(self) -> int:
        return len(self.responses)


UNARY = Call("unary", UNARY_METHOD, REQUEST.SerializeToString(), (RESPONSE.SerializeToString(),))
STREAM = Call(
    "stream", STREAM_METHOD, STREAM_REQUEST.SerializeToString(), tuple(e.SerializeToString() for e in STREAM_EVENTS)
)
CALLS = {call.kind: call for call in (UNARY, STREAM)}
