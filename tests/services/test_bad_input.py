"""Bad input is refused with INVALID_ARGUMENT naming the field, or NOT_FOUND; no input crashes a server."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2

from agentmesh.agent.v1 import agent_service_pb2 as agent_pb
from agentmesh.agent.v1 import agent_service_pb2_grpc as agent_grpc
from agentmesh.rag.v1 import document_pb2
from agentmesh.rag.v1 import rag_service_pb2 as rag_pb
from agentmesh.rag.v1 import rag_service_pb2_grpc as rag_grpc
from rpcstatus.errors import status_details
from tests.system import System, health_status


def violated_fields(error: grpc.aio.AioRpcError) -> list[str]:
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    [bad_request] = [d for d in status_details(error) if isinstance(d, error_details_pb2.BadRequest)]
    return [v.field for v in bad_request.field_violations]


AGENT_CASES = [
    ("CreateRun", agent_pb.CreateRunRequest(question=""), ["question"]),
    ("CreateRun", agent_pb.CreateRunRequest(question="   "), ["question"]),
    ("CreateRun", agent_pb.CreateRunRequest(question="x" * 4001), ["question"]),
    ("CreateRun", agent_pb.CreateRunRequest(question="ok?", request_id="not a valid id!"), ["request_id"]),
    ("CreateRun", agent_pb.CreateRunRequest(question="ok?", labels={"k": "v" * 64}), ["labels['k']"]),
    ("GetRun", agent_pb.GetRunRequest(run_id=""), ["run_id"]),
    ("GetRun", agent_pb.GetRunRequest(run_id="../../etc/passwd"), ["run_id"]),
    ("ListRuns", agent_pb.ListRunsRequest(page_token="%%%not-a-token"), ["page_token"]),
    ("ListRuns", agent_pb.ListRunsRequest(page_token="eyJmb28iOjF9"), ["page_token"]),  # valid base64, wrong shape
    ("ListRuns", agent_pb.ListRunsRequest(page_size=-1), ["page_size"]),
    ("SubmitReview", agent_pb.SubmitReviewRequest(run_id="run_" + "0" * 32), ["decision"]),
    ("WatchRun", agent_pb.WatchRunRequest(run_id="run_" + "0" * 32, after_sequence=-1), ["after_sequence"]),
]

RAG_CASES = [
    ("IngestDocuments", rag_pb.IngestDocumentsRequest(), ["documents"]),
    (
        "IngestDocuments",
        rag_pb.IngestDocumentsRequest(documents=[document_pb2.Document(document_id="", text="t")]),
        ["documents[0].document_id"],
    ),
    (
        "IngestDocuments",
        rag_pb.IngestDocumentsRequest(documents=[document_pb2.Document(document_id="a", text="")]),
        ["documents[0].text"],
    ),
    (
        "IngestDocuments",
        rag_pb.IngestDocumentsRequest(documents=[document_pb2.Document(document_id="a", text="x" * (1024 * 1024 + 1))]),
        ["documents[0].text"],
    ),
    (
        "IngestDocuments",
        rag_pb.IngestDocumentsRequest(
            documents=[
                document_pb2.Document(document_id="a", text="t"),
                document_pb2.Document(document_id="a", text="u"),
            ]
        ),
        ["documents[1].document_id"],
    ),
    ("Search", rag_pb.SearchRequest(query="", top_k=5), ["query"]),
    ("Search", rag_pb.SearchRequest(query="q"), ["top_k"]),
    ("Search", rag_pb.SearchRequest(query="q", top_k=0), ["top_k"]),
    ("Search", rag_pb.SearchRequest(query="q", top_k=51), ["top_k"]),
    ("Search", rag_pb.SearchRequest(query="q", top_k=-1), ["top_k"]),
    ("Search", rag_pb.SearchRequest(query="q" * 2001, top_k=5), ["query"]),
    ("GetDocument", rag_pb.GetDocumentRequest(document_id="bad id with spaces"), ["document_id"]),
]


@pytest.mark.parametrize(("method", "request_message", "fields"), AGENT_CASES)
async def test_agent_rejects_bad_input_naming_the_field(
    gateway_channel: grpc.aio.Channel, method: str, request_message: object, fields: list[str]
) -> None:
    rpc = getattr(agent_grpc.AgentServiceStub(gateway_channel), method)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        response = rpc(request_message, timeout=5)
        if method == "WatchRun":
            async for _ in response:
                pass
        else:
            await response
    assert violated_fields(raised.value) == fields


@pytest.mark.parametrize(("method", "request_message", "fields"), RAG_CASES)
async def test_rag_rejects_bad_input_naming_the_field(
    gateway_channel: grpc.aio.Channel, method: str, request_message: object, fields: list[str]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await getattr(rag_grpc.RagServiceStub(gateway_channel), method)(request_message, timeout=10)
    assert violated_fields(raised.value) == fields


async def test_unknown_ids_are_not_found(gateway_channel: grpc.aio.Channel, system: System) -> None:
    agent = agent_grpc.AgentServiceStub(gateway_channel)
    rag = rag_grpc.RagServiceStub(gateway_channel)
    missing_run = "run_" + "f" * 32
    calls = [
        agent.GetRun(agent_pb.GetRunRequest(run_id=missing_run), timeout=5),
        agent.CancelRun(agent_pb.CancelRunRequest(run_id=missing_run), timeout=5),
        agent.SubmitReview(
            agent_pb.SubmitReviewRequest(run_id=missing_run, decision=agent_pb.SubmitReviewRequest.DECISION_APPROVE),
            timeout=5,
        ),
        rag.GetDocument(rag_pb.GetDocumentRequest(document_id="nope"), timeout=5),
        rag.DeleteDocument(rag_pb.DeleteDocumentRequest(document_id="nope"), timeout=5),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
        assert "does not exist" in (raised.value.details() or "")
    for server in ("gateway", "agent", "rag"):
        assert await health_status(system.address(server)) == "SERVING"


async def test_garbage_bytes_are_refused_without_crashing(system: System) -> None:
    async with grpc.aio.insecure_channel(system.gateway_address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await channel.unary_unary("/agentmesh.agent.v1.AgentService/CreateRun")(b"\xff\xff\xff\xff", timeout=5)
        assert violated_fields(raised.value) == ["(request)"]
    assert await health_status(system.address("agent")) == "SERVING"
