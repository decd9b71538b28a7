"""Runs and documents are persisted: a restarted service still has them."""

from __future__ import annotations

from pathlib import Path

import grpc

from agentmesh.agent.v1 import agent_service_pb2 as agent_pb
from agentmesh.agent.v1 import agent_service_pb2_grpc as agent_grpc
from agentmesh.rag.v1 import document_pb2
from agentmesh.rag.v1 import rag_service_pb2 as rag_pb
from agentmesh.rag.v1 import rag_service_pb2_grpc as rag_grpc
from tests.services.agent.runs import settled_run
from tests.system import ServiceProcess, spawn_serving


async def _rag(tmp_path: Path) -> ServiceProcess:
    return await spawn_serving(
        "services.rag",
        {
            "AGENTMESH_RAG_PORT": "0",
            "AGENTMESH_RAG_PORT_FILE": str(tmp_path / "rag.port"),
            "AGENTMESH_RAG_DATA_DIR": str(tmp_path / "data"),
            "AGENTMESH_RAG_DRAIN_DELAY_S": "0",
        },
        tmp_path,
    )


async def _agent(tmp_path: Path, rag_address: str) -> ServiceProcess:
    return await spawn_serving(
        "services.agent",
        {
            "AGENTMESH_AGENT_PORT": "0",
            "AGENTMESH_AGENT_PORT_FILE": str(tmp_path / "agent.port"),
            "AGENTMESH_AGENT_DATA_DIR": str(tmp_path / "data"),
            "AGENTMESH_AGENT_RAG_ENDPOINTS": f'["{rag_address}"]',
            "AGENTMESH_AGENT_DRAIN_DELAY_S": "0",
        },
        tmp_path,
    )


async def test_documents_and_runs_survive_a_restart(tmp_path: Path) -> None:
    rag = await _rag(tmp_path)
    agent = await _agent(tmp_path, rag.address)
    try:
        async with grpc.aio.insecure_channel(rag.address) as channel:
            await rag_grpc.RagServiceStub(channel).IngestDocuments(
                rag_pb.IngestDocumentsRequest(
                    documents=[document_pb2.Document(document_id="vacation", text="Employees get 25 vacation days.")]
                ),
                timeout=5,
            )
        async with grpc.aio.insecure_channel(agent.address) as channel:
            created = (
                await agent_grpc.AgentServiceStub(channel).CreateRun(
                    agent_pb.CreateRunRequest(question="How many vacation days?", request_id="r-1"), timeout=5
                )
            ).run
            run = await settled_run(agent_grpc.AgentServiceStub(channel), created.run_id)
        assert agent.terminate() == 0
        assert rag.terminate() == 0

        rag = await _rag(tmp_path)
        agent = await _agent(tmp_path, rag.address)
        async with grpc.aio.insecure_channel(rag.address) as channel:
            stub = rag_grpc.RagServiceStub(channel)
            document = (await stub.GetDocument(rag_pb.GetDocumentRequest(document_id="vacation"), timeout=5)).document
            assert document.text == "Employees get 25 vacation days."
            hits = await stub.Search(rag_pb.SearchRequest(query="vacation days", top_k=3), timeout=5)
            assert hits.results[0].citation.document_id == "vacation"
        async with grpc.aio.insecure_channel(agent.address) as channel:
            stub_agent = agent_grpc.AgentServiceStub(channel)
            assert (await stub_agent.GetRun(agent_pb.GetRunRequest(run_id=run.run_id), timeout=5)).run == run
            # The request ID is remembered across the restart too: the retry returns the same run.
            retried = await stub_agent.CreateRun(
                agent_pb.CreateRunRequest(question="How many vacation days?", request_id="r-1"), timeout=5
            )
            assert retried.run.run_id == run.run_id
    finally:
        agent.kill()
        rag.kill()
