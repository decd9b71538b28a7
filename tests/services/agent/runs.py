"""Client-side helpers for tests: wait for a run to settle by watching its events (no polling)."""

from __future__ import annotations

from agentmesh.agent.v1 import agent_service_pb2 as agent_pb
from agentmesh.agent.v1 import agent_service_pb2_grpc as agent_grpc
from agentmesh.agent.v1 import run_pb2

Run = run_pb2.Run
SETTLED = frozenset({Run.STATE_COMPLETED, Run.STATE_FAILED, Run.STATE_CANCELLED, Run.STATE_WAITING_FOR_REVIEW})


async def settled_run(
    agent: agent_grpc.AgentServiceAsyncStub,
    run_id: str,
    *,
    timeout_s: float = 20,
    metadata: tuple[tuple[str, str], ...] | None = None,
) -> run_pb2.Run:
    """The run once it is finished or waiting for review, read back with GetRun."""
    stream = agent.WatchRun(agent_pb.WatchRunRequest(run_id=run_id), timeout=timeout_s, metadata=metadata)
    async for response in stream:
        if response.event.type == "run.state_changed" and response.event.to_state in SETTLED:
            stream.cancel()
            break
    return (await agent.GetRun(agent_pb.GetRunRequest(run_id=run_id), timeout=5, metadata=metadata)).run


async def until_step(agent: agent_grpc.AgentServiceAsyncStub, run_id: str, step: str) -> None:
    """Return once the run reports workflow step ``step`` completed."""
    stream = agent.WatchRun(agent_pb.WatchRunRequest(run_id=run_id), timeout=20)
    async for response in stream:
        if response.event.type == "run.step_completed" and response.event.cause.startswith(f"{step}:"):
            stream.cancel()
            return
    raise AssertionError(f"the run ended before step {step}")
