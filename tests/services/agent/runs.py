"""Client-side helpers for tests: wait for a run to settle by watching its events (no polling)."""

from __future__ import annotations

import asyncio
from collections import Counter

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


async def listed_once(
    agent: agent_grpc.AgentServiceAsyncStub,
    run_ids: list[str],
    request: agent_pb.ListRunsRequest | None = None,
    *,
    metadata: tuple[tuple[str, str], ...] | None = None,
) -> agent_pb.ListRunsResponse:
    """The first ListRuns page that holds every run of ``run_ids``.

    ListRuns reads the read model, which follows the log within moments rather than waiting
    for it (GetRun finds a new run at once): a test waits for the runs it just created.
    """
    request = request or agent_pb.ListRunsRequest()
    page = agent_pb.ListRunsResponse()
    for _ in range(200):
        page = await agent.ListRuns(request, timeout=5, metadata=metadata)
        if set(run_ids) <= {r.run_id for r in page.runs}:
            return page
        await asyncio.sleep(0.05)
    raise AssertionError(f"ListRuns did not list {run_ids} within 10 s: {[r.run_id for r in page.runs]}")


def assert_settled_once(history: list[run_pb2.RunEvent]) -> None:
    """A run's whole history, however many replicas executed or took it over: gap-free, settled
    exactly once, no step recorded twice."""
    sequences = [e.sequence for e in history]
    assert sequences == list(range(1, len(history) + 1)), sequences
    terminal = [e for e in history if e.type == "run.state_changed" and e.to_state in SETTLED]
    assert len(terminal) == 1, history
    steps = Counter(e.cause.split(":")[0] for e in history if e.type == "run.step_completed")
    assert all(count == 1 for count in steps.values()), steps
