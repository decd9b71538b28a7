"""The agent process killed with SIGKILL mid-run: the restarted service resumes the run to completion."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from agentmesh.agent.v1 import agent_service_pb2 as agent_pb
from agentmesh.agent.v1 import agent_service_pb2_grpc as agent_grpc
from agentmesh.agent.v1 import run_pb2
from agentmesh.rag.v1 import rag_service_pb2 as rag_pb
from agentmesh.rag.v1 import rag_service_pb2_grpc as rag_grpc
from tests.services.agent.runs import settled_run, until_step
from tests.services.agent.test_agent_service import KNOWLEDGE
from tests.system import ServiceProcess, spawn_serving

pytestmark = pytest.mark.slow


async def _service(name: str, tmp_path: Path, **env: str) -> ServiceProcess:
    prefix = f"AGENTMESH_{name.upper()}_"
    base = {"PORT": "0", "PORT_FILE": str(tmp_path / f"{name}.port"), "DATA_DIR": str(tmp_path / name)}
    return await spawn_serving(f"services.{name}", {prefix + k: v for k, v in {**base, **env}.items()}, tmp_path)


async def test_a_run_interrupted_by_sigkill_is_resumed_by_the_restarted_service(tmp_path: Path) -> None:
    rag = await _service("rag", tmp_path)
    rag_endpoint = f'["{rag.address}"]'
    slow = {"DECISION_ENGINE": "tests.services.agent.engines:SlowEngine", "DECISION_ENGINE_OPTIONS": '{"delay_s": 60}'}
    agent = await _service("agent", tmp_path, RAG_ENDPOINTS=rag_endpoint, **slow)
    try:
        async with grpc.aio.insecure_channel(rag.address) as channel:
            await rag_grpc.RagServiceStub(channel).IngestDocuments(
                rag_pb.IngestDocumentsRequest(documents=KNOWLEDGE), timeout=10
            )
        async with grpc.aio.insecure_channel(agent.address) as channel:
            stub = agent_grpc.AgentServiceStub(channel)
            run = (await stub.CreateRun(agent_pb.CreateRunRequest(question="How long do refunds take?"), timeout=5)).run
            await until_step(stub, run.run_id, "retrieve")  # now deciding, for 60 s
        agent.kill()  # SIGKILL: no drain, no shutdown hooks

        agent = await _service("agent", tmp_path, RAG_ENDPOINTS=rag_endpoint)
        async with grpc.aio.insecure_channel(agent.address) as channel:
            stub = agent_grpc.AgentServiceStub(channel)
            finished = await settled_run(stub, run.run_id)
            events = [r.event async for r in stub.WatchRun(agent_pb.WatchRunRequest(run_id=run.run_id), timeout=10)]
    finally:
        agent.kill()
        rag.kill()

    assert finished.state == run_pb2.Run.STATE_COMPLETED
    assert "5 business days" in finished.answer
    steps = [e.cause.split(":")[0] for e in events if e.type == "run.step_completed"]
    # Each step completed exactly once across both processes; decide ran again after the restart.
    assert steps == ["validate", "reserve_budget", "retrieve", "decide"]
    transitions = [e.to_state for e in events if e.type == "run.state_changed"]
    assert transitions == [run_pb2.Run.STATE_PROCESSING, run_pb2.Run.STATE_COMPLETED]
