"""Auth, rate limits and circuit breakers, through the real gateway in front of the real backends."""

from __future__ import annotations

import uuid

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentmesh.agent.v1 import agent_service_pb2 as agent_pb
from agentmesh.agent.v1 import agent_service_pb2_grpc as agent_grpc
from agentmesh.agent.v1 import run_pb2
from agentmesh.rag.v1 import document_pb2
from agentmesh.rag.v1 import rag_service_pb2 as rag_pb
from agentmesh.rag.v1 import rag_service_pb2_grpc as rag_grpc
from rpcstatus.details import find_detail
from tests.services.agent.runs import settled_run
from tests.services.issuer import Issuer
from tests.system import System

REFUNDS = document_pb2.Document(
    document_id="refund-policy", text="Refunds are processed within 5 business days.", metadata={"team": "billing"}
)


def reason(error: grpc.aio.AioRpcError) -> str | None:
    info = find_detail(error, error_details_pb2.ErrorInfo)
    return None if info is None else info.reason


async def test_calls_without_a_token_are_refused_at_the_gateway(secured_system: System) -> None:
    async with grpc.aio.insecure_channel(secured_system.gateway_address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await agent_grpc.AgentServiceStub(channel).ListRuns(agent_pb.ListRunsRequest(), timeout=5)
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert reason(caught.value) == "TOKEN_MISSING"


async def test_health_and_reflection_stay_public(secured_system: System) -> None:
    async with grpc.aio.insecure_channel(secured_system.gateway_address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_run_carries_the_callers_identity_through_gateway_agent_and_rag(
    secured_system: System, issuer: Issuer
) -> None:
    async with grpc.aio.insecure_channel(secured_system.gateway_address) as channel:
        rag = rag_grpc.RagServiceStub(channel)
        agent = agent_grpc.AgentServiceStub(channel)
        await rag.IngestDocuments(
            rag_pb.IngestDocumentsRequest(documents=[REFUNDS]),
            metadata=issuer.bearer("librarian", "documents.write"),
            timeout=5,
        )
        # The agent searches RAG with the caller's own (forwarded, re-verified) token.
        created = await agent.CreateRun(
            agent_pb.CreateRunRequest(request_id=str(uuid.uuid4()), question="How long do refunds take?"),
            metadata=issuer.bearer("alice", "runs.write", "documents.read"),
            timeout=10,
        )
        # The run answers in the background, still as alice, whose token the agent forwards.
        run = await settled_run(agent, created.run.run_id, metadata=issuer.bearer("alice", "runs.read"))
    assert run.state == run_pb2.Run.STATE_COMPLETED
    assert run.citations[0].document_id == "refund-policy"


async def test_a_missing_scope_is_permission_denied_through_the_gateway(secured_system: System, issuer: Issuer) -> None:
    async with grpc.aio.insecure_channel(secured_system.gateway_address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await rag_grpc.RagServiceStub(channel).IngestDocuments(
                rag_pb.IngestDocumentsRequest(documents=[REFUNDS]),
                metadata=issuer.bearer("reader", "documents.read"),
                timeout=5,
            )
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert reason(caught.value) == "SCOPE_MISSING"


async def test_backends_verify_tokens_themselves_when_called_directly(secured_system: System, issuer: Issuer) -> None:
    async with grpc.aio.insecure_channel(secured_system.address("rag")) as channel:
        rag = rag_grpc.RagServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await rag.Search(rag_pb.SearchRequest(query="refunds", top_k=3), timeout=5)
        assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
        found = await rag.Search(
            rag_pb.SearchRequest(query="refunds", top_k=3), metadata=issuer.bearer("bob", "documents.read"), timeout=5
        )
    assert list(found.results) == []


async def test_a_caller_over_its_rate_limit_gets_retry_and_quota_details(
    secured_system: System, issuer: Issuer
) -> None:
    md = issuer.bearer("busy", "documents.read")
    async with grpc.aio.insecure_channel(secured_system.gateway_address) as channel:
        rag = rag_grpc.RagServiceStub(channel)
        for _ in range(3):
            await rag.Search(rag_pb.SearchRequest(query="refunds", top_k=3), metadata=md, timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await rag.Search(rag_pb.SearchRequest(query="refunds", top_k=3), metadata=md, timeout=5)
        # Another caller has its own bucket.
        await rag.Search(
            rag_pb.SearchRequest(query="refunds", top_k=3), metadata=issuer.bearer("calm", "documents.read")
        )
    error = caught.value
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason(error) == "RATE_LIMITED"
    assert find_detail(error, error_details_pb2.RetryInfo) is not None
    quota = find_detail(error, error_details_pb2.QuotaFailure)
    assert quota is not None and quota.violations[0].subject == "caller:busy"


async def test_a_backend_killed_mid_run_trips_its_circuit_at_the_gateway_and_not_the_others(
    secured_system: System, issuer: Issuer
) -> None:
    async with grpc.aio.insecure_channel(secured_system.gateway_address) as channel:
        rag = rag_grpc.RagServiceStub(channel)
        agent = agent_grpc.AgentServiceStub(channel)
        reader = issuer.bearer("ops", "documents.read", "runs.read")
        await agent.ListRuns(agent_pb.ListRunsRequest(), metadata=reader, timeout=5)

        await secured_system.rag.stop()  # RAG dies mid-run

        # GetDocument is NO_SIDE_EFFECTS: the gateway retries it, and the three failed
        # attempts open RAG's circuit; from then on calls fail fast without reaching RAG.
        with pytest.raises(grpc.aio.AioRpcError) as first:
            await rag.GetDocument(rag_pb.GetDocumentRequest(document_id="x"), metadata=reader, timeout=5)
        assert first.value.code() is grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.aio.AioRpcError) as fast:
            await rag.GetDocument(rag_pb.GetDocumentRequest(document_id="x"), metadata=reader, timeout=5)
        assert fast.value.code() is grpc.StatusCode.UNAVAILABLE
        assert reason(fast.value) == "CIRCUIT_OPEN"

        # The agent's circuit is separate and still closed.
        await agent.ListRuns(agent_pb.ListRunsRequest(), metadata=reader, timeout=5)
