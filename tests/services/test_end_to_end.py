"""The whole system through the gateway, with the generated stubs a client would use."""

from __future__ import annotations

import uuid

import grpc
import pytest

from agentmesh.agent.v1 import agent_service_pb2 as agent_pb
from agentmesh.agent.v1 import agent_service_pb2_grpc as agent_grpc
from agentmesh.agent.v1 import run_pb2
from agentmesh.rag.v1 import document_pb2
from agentmesh.rag.v1 import rag_service_pb2 as rag_pb
from agentmesh.rag.v1 import rag_service_pb2_grpc as rag_grpc
from tests.services.agent.runs import listed_once, settled_run
from tests.system import REPO

KNOWLEDGE = [
    document_pb2.Document(
        document_id="refund-policy",
        text="# Refunds\n\nRefunds are processed within 5 business days.\n\nA refund needs the order number.",
        metadata={"team": "billing"},
        content_type="text/markdown",
    ),
    document_pb2.Document(
        document_id="shipping",
        text="Standard shipping takes 3 to 7 days. Express shipping arrives the next day.",
        metadata={"team": "logistics"},
    ),
]


async def test_a_run_created_through_the_gateway_cites_ingested_knowledge(gateway_channel: grpc.aio.Channel) -> None:
    rag = rag_grpc.RagServiceStub(gateway_channel)
    agent = agent_grpc.AgentServiceStub(gateway_channel)
    ingested = await rag.IngestDocuments(rag_pb.IngestDocumentsRequest(documents=KNOWLEDGE), timeout=5)
    assert [r.outcome for r in ingested.results] == [rag_pb.IngestResult.OUTCOME_CREATED] * 2

    created = await agent.CreateRun(
        agent_pb.CreateRunRequest(request_id=str(uuid.uuid4()), question="How long do refunds take?"), timeout=5
    )
    # CreateRun returns at once; the workflow finishes in the background.
    assert created.run.state == run_pb2.Run.STATE_PROCESSING
    run = await settled_run(agent, created.run.run_id)
    assert run.state == run_pb2.Run.STATE_COMPLETED
    assert "5 business days" in run.answer
    assert run.citations[0].document_id == "refund-policy"
    cited = run.citations[0]
    document = (await rag.GetDocument(rag_pb.GetDocumentRequest(document_id="refund-policy"))).document
    assert document.text[cited.start_offset : cited.end_offset] == cited.quote

    fetched = await agent.GetRun(agent_pb.GetRunRequest(run_id=run.run_id), timeout=5)
    assert fetched.run == run


async def test_the_readme_question_over_the_example_knowledge_is_answered_by_the_refund_sentence_alone(
    gateway_channel: grpc.aio.Channel,
) -> None:
    # What a newcomer sees first: `make run` seeds examples/knowledge/ and the README asks this.
    examples = sorted((REPO / "examples" / "knowledge").glob("*.md"))
    documents = [
        document_pb2.Document(document_id=p.stem, text=p.read_text(), content_type="text/markdown") for p in examples
    ]
    await rag_grpc.RagServiceStub(gateway_channel).IngestDocuments(rag_pb.IngestDocumentsRequest(documents=documents))
    agent = agent_grpc.AgentServiceStub(gateway_channel)

    created = await agent.CreateRun(
        agent_pb.CreateRunRequest(request_id=str(uuid.uuid4()), question="How long do refunds take?"), timeout=5
    )
    run = await settled_run(agent, created.run.run_id)

    assert [c.quote for c in run.citations] == [
        "Refunds are processed within 5 business days after the returned item arrives at the warehouse."
    ]
    assert "Password" not in run.answer
    # A sentence about passwords would have parked the run for review (a sensitive term).
    assert run.state == run_pb2.Run.STATE_COMPLETED


async def test_retrieval_filter_restricts_the_knowledge_a_run_uses(gateway_channel: grpc.aio.Channel) -> None:
    await rag_grpc.RagServiceStub(gateway_channel).IngestDocuments(rag_pb.IngestDocumentsRequest(documents=KNOWLEDGE))
    agent = agent_grpc.AgentServiceStub(gateway_channel)
    created = (
        await agent.CreateRun(
            agent_pb.CreateRunRequest(question="How long do refunds take?", retrieval_filter={"team": "logistics"})
        )
    ).run
    run = await settled_run(agent, created.run_id)
    assert all(c.document_id == "shipping" for c in run.citations)


async def test_list_runs_pages_newest_first_and_filters_by_state(gateway_channel: grpc.aio.Channel) -> None:
    agent = agent_grpc.AgentServiceStub(gateway_channel)
    created = [
        (await agent.CreateRun(agent_pb.CreateRunRequest(question=f"question {i}?"))).run.run_id for i in range(5)
    ]
    await listed_once(agent, created)
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await agent.ListRuns(agent_pb.ListRunsRequest(page_size=2, page_token=token))
        assert len(page.runs) <= 2
        seen += [r.run_id for r in page.runs]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(created))
    assert pages == 3
    for run_id in created:
        await settled_run(agent, run_id)
    completed = await listed_once(agent, created, agent_pb.ListRunsRequest(state=run_pb2.Run.STATE_COMPLETED))
    assert len(completed.runs) == 5
    cancelled = await agent.ListRuns(agent_pb.ListRunsRequest(state=run_pb2.Run.STATE_CANCELLED))
    assert list(cancelled.runs) == []


async def test_create_run_with_the_same_request_id_returns_the_first_run(gateway_channel: grpc.aio.Channel) -> None:
    agent = agent_grpc.AgentServiceStub(gateway_channel)
    request = agent_pb.CreateRunRequest(request_id=str(uuid.uuid4()), question="What is the refund policy?")
    first = (await agent.CreateRun(request)).run
    second = (await agent.CreateRun(request)).run
    assert first.run_id == second.run_id
    listed = await listed_once(agent, [first.run_id])
    assert [r.run_id for r in listed.runs] == [first.run_id]


async def test_server_streaming_passes_through_the_gateway(gateway_channel: grpc.aio.Channel) -> None:
    agent = agent_grpc.AgentServiceStub(gateway_channel)
    run = (await agent.CreateRun(agent_pb.CreateRunRequest(question="Anything about shipping?"))).run
    events = [r.event async for r in agent.WatchRun(agent_pb.WatchRunRequest(run_id=run.run_id), timeout=5)]
    transitions = [e.to_state for e in events if e.type == "run.state_changed"]
    assert transitions == [run_pb2.Run.STATE_PROCESSING, run_pb2.Run.STATE_COMPLETED]
    assert [e.sequence for e in events] == sorted({e.sequence for e in events})
    resumed = [
        r.event
        async for r in agent.WatchRun(
            agent_pb.WatchRunRequest(run_id=run.run_id, after_sequence=events[0].sequence), timeout=5
        )
    ]
    assert resumed == events[1:]


async def test_client_streaming_ingestion_passes_through_the_gateway(gateway_channel: grpc.aio.Channel) -> None:
    rag = rag_grpc.RagServiceStub(gateway_channel)

    async def documents():
        for i in range(20):
            yield rag_pb.StreamIngestDocumentsRequest(
                document=document_pb2.Document(document_id=f"doc-{i}", text=f"Fact number {i} is true.")
            )

    response = await rag.StreamIngestDocuments(documents(), timeout=10)
    assert len(response.results) == 20
    hits = await rag.Search(rag_pb.SearchRequest(query="fact number 7", top_k=3))
    assert hits.results[0].citation.document_id == "doc-7"


async def test_cancelling_a_finished_run_is_a_failed_precondition_naming_both_states(
    gateway_channel: grpc.aio.Channel,
) -> None:
    agent = agent_grpc.AgentServiceStub(gateway_channel)
    created = (await agent.CreateRun(agent_pb.CreateRunRequest(question="Refunds?"))).run
    run = await settled_run(agent, created.run_id)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await agent.CancelRun(agent_pb.CancelRunRequest(run_id=run.run_id))
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "STATE_COMPLETED" in (raised.value.details() or "")
    assert "STATE_CANCELLED" in (raised.value.details() or "")
