"""RAG replicas on one shared PostgreSQL database, each with its own data dir (as pods with their own volumes).

A document ingested or deleted through one replica is seen by every other replica's searches
within the staleness bound; nothing is embedded twice; the database going away leaves searches
served from each replica's snapshot, writes answered UNAVAILABLE with RetryInfo, and the
replicas catch up when it is back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import numpy as np
import numpy.typing as npt
import pytest
from google.rpc import error_details_pb2
from prometheus_client import CollectorRegistry

from agentmesh.rag.v1 import document_pb2
from agentmesh.rag.v1 import rag_service_pb2 as rag_pb
from agentmesh.rag.v1 import rag_service_pb2_grpc as rag_grpc
from rpcstatus.errors import status_details
from runtime.bootstrap import ManagedServer
from runtime.database import Database, open_database
from runtime.database.sqlite import SQLiteDatabase
from services.rag.chunking import ChunkingOptions
from services.rag.config import RagSettings
from services.rag.following import FollowingMetrics
from services.rag.knowledge_base import DocumentInput, IngestOutcome, KnowledgeBase, Mode
from services.rag.server import build as build_rag
from tests.services.rag.conftest import HashingEmbedder
from tests.system import health_status, start_rag, wait_until
from tools.postgres_local import LocalPostgres

# The staleness target is 2 s; the tests allow more on a loaded CI machine, and the follower's
# safety poll is set far above it, so meeting the deadline proves the notification path works.
STALENESS_DEADLINE_S = 5.0
SLOW_POLL_S = 60.0

RETRIES = document_pb2.Document(
    document_id="guide/retries", text="Retries back off exponentially with jitter and a retry budget."
)


class CountingEmbedder(HashingEmbedder):
    """Counts every text embedded, chunks and search queries alike."""

    def __init__(self) -> None:
        super().__init__()
        self.texts = 0

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.texts += len(texts)
        return super().embed(texts)


async def search_ids(address: str, query: str) -> list[str]:
    async with grpc.aio.insecure_channel(address) as channel:
        response = await rag_grpc.RagServiceStub(channel).Search(rag_pb.SearchRequest(query=query, top_k=5), timeout=5)
    return [r.citation.document_id for r in response.results]


async def ingest(address: str, *documents: document_pb2.Document) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        await rag_grpc.RagServiceStub(channel).IngestDocuments(
            rag_pb.IngestDocumentsRequest(documents=documents), timeout=10
        )


async def found_within_deadline(address: str, query: str, document_id: str, *, present: bool = True) -> None:
    async def seen() -> bool:
        return (document_id in await search_ids(address, query)) is present

    await wait_until(seen, timeout_s=STALENESS_DEADLINE_S, interval_s=0.02)


def address(server: ManagedServer) -> str:
    return f"127.0.0.1:{server.port}"


async def start_replicas(url: str, tmp_path: Path, count: int = 2) -> list[ManagedServer]:
    return [
        await start_rag(tmp_path / f"replica-{i}", database_url=url, follow_poll_s=SLOW_POLL_S)
        for i in range(1, count + 1)
    ]


@pytest.fixture
async def replicas(postgres_url: str, tmp_path: Path) -> AsyncIterator[list[ManagedServer]]:
    servers = await start_replicas(postgres_url, tmp_path)
    yield servers
    for server in servers:
        await server.stop()


async def test_a_document_ingested_through_one_replica_is_found_on_the_other(replicas: list[ManagedServer]) -> None:
    first, second = map(address, replicas)
    assert await search_ids(second, "retry budget") == []
    await ingest(first, RETRIES)
    await found_within_deadline(second, "retry budget", "guide/retries")


async def test_a_document_deleted_through_one_replica_is_gone_from_the_other(replicas: list[ManagedServer]) -> None:
    first, second = map(address, replicas)
    await ingest(first, RETRIES)
    await found_within_deadline(second, "retry budget", "guide/retries")
    async with grpc.aio.insecure_channel(second) as channel:
        await rag_grpc.RagServiceStub(channel).DeleteDocument(
            rag_pb.DeleteDocumentRequest(document_id="guide/retries"), timeout=5
        )
    await found_within_deadline(first, "retry budget", "guide/retries", present=False)


@pytest.fixture
async def shared_db(postgres_url: str, tmp_path: Path) -> AsyncIterator[Database]:
    db = await open_database(postgres_url, sqlite_path=tmp_path / "unused", setting="AGENTMESH_RAG_DATABASE_URL")
    yield db
    await db.close()


async def open_replica(db: Database, data_dir: Path, embedder: CountingEmbedder) -> KnowledgeBase:
    return await KnowledgeBase.open(
        data_dir, database=db, embedder=embedder, chunking=ChunkingOptions(size=120, overlap=20)
    )


DOCUMENTS = [
    DocumentInput(f"doc-{i}", f"Document {i} explains topic{i} in two sentences. Topic{i} matters to team {i}.")
    for i in range(6)
]


async def test_no_replica_embeds_what_another_already_embedded(shared_db: Database, tmp_path: Path) -> None:
    embedder_1, embedder_2 = CountingEmbedder(), CountingEmbedder()
    replica_1 = await open_replica(shared_db, tmp_path / "one", embedder_1)
    await replica_1.ingest(DOCUMENTS)
    embedded = embedder_1.texts
    assert embedded >= len(DOCUMENTS)

    # A replica starting on the shared store loads the stored embeddings: nothing to embed.
    replica_2 = await open_replica(shared_db, tmp_path / "two", embedder_2)
    assert embedder_2.texts == 0
    assert replica_2.embedded_chunks == 0
    hits = await replica_2.search("topic3", top_k=1, mode=Mode.DENSE)
    assert hits[0].document.document_id == "doc-3"

    # Re-ingesting through the other replica is a no-op; a restart from an empty data dir (a new
    # pod) does not embed either.
    [result] = await replica_2.ingest([DOCUMENTS[0]])
    assert result.outcome is IngestOutcome.UNCHANGED
    assert replica_2.embedded_chunks == 0  # (its embedder ran only for the search's query)
    await replica_1.close()
    restarted_embedder = CountingEmbedder()
    restarted = await open_replica(shared_db, tmp_path / "one-again", restarted_embedder)
    assert restarted_embedder.texts == 0
    assert {h.document.document_id for h in await restarted.search("topic5", top_k=3, mode=Mode.DENSE)} >= {"doc-5"}
    assert embedder_1.texts == embedded
    await restarted.close()
    await replica_2.close()


async def test_a_follower_wakes_on_another_replicas_commit_and_reports_its_staleness(
    postgres_url: str, shared_db: Database, tmp_path: Path
) -> None:
    writer = await open_replica(shared_db, tmp_path / "writer", CountingEmbedder())
    # Its own connections, as another process would have: only the notification can wake it.
    follower_db = await open_database(
        postgres_url, sqlite_path=tmp_path / "unused", setting="AGENTMESH_RAG_DATABASE_URL"
    )
    registry = CollectorRegistry()
    follower = await KnowledgeBase.open(tmp_path / "follower", database=follower_db, metrics=FollowingMetrics(registry))
    loop = follower.follower(poll_s=SLOW_POLL_S).start()
    try:
        await writer.ingest(DOCUMENTS[:2])

        async def caught_up() -> bool:
            return follower.snapshot.generation == writer.snapshot.generation

        await wait_until(caught_up, timeout_s=STALENESS_DEADLINE_S, interval_s=0.01)
        assert [h.document.document_id for h in await follower.search("topic1", top_k=1)] == ["doc-1"]
        assert (registry.get_sample_value("agentmesh_rag_snapshot_staleness_seconds_count") or 0) >= 1
        assert registry.get_sample_value("agentmesh_rag_snapshot_generation") == writer.snapshot.generation
    finally:
        await loop.stop()
        await follower.close()
        await follower_db.close()
        await writer.close()


async def test_two_replicas_ingesting_the_same_documents_at_once_store_them_once(
    shared_db: Database, tmp_path: Path
) -> None:
    replica_1 = await open_replica(shared_db, tmp_path / "one", CountingEmbedder())
    replica_2 = await open_replica(shared_db, tmp_path / "two", CountingEmbedder())
    try:
        results = await asyncio.gather(replica_1.ingest(DOCUMENTS), replica_2.ingest(DOCUMENTS))
        outcomes = sorted(sorted({r.outcome.value for r in result}) for result in results)
        # Serialized by the store: one commit created them all, the other found them stored.
        assert outcomes == [["created"], ["unchanged"]]
        row = await shared_db.fetch_one("SELECT COUNT(*), COUNT(DISTINCT content_hash) FROM rag_documents")
        assert row is not None and (row[0], row[1]) == (len(DOCUMENTS), len(DOCUMENTS))
        row = await shared_db.fetch_one("SELECT COUNT(*) FROM rag_chunks")
        assert row is not None and row[0] == sum(r.chunk_count for r in results[0])
    finally:
        await replica_1.close()
        await replica_2.close()


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_with_the_database_down_searches_are_served_writes_are_unavailable_and_replicas_catch_up(
    own_postgres: LocalPostgres, tmp_path: Path
) -> None:
    servers = await start_replicas(own_postgres.url(), tmp_path)
    first, second = map(address, servers)
    try:
        await ingest(first, RETRIES)
        await found_within_deadline(second, "retry budget", "guide/retries")

        await asyncio.to_thread(own_postgres.stop)
        # Searches need no database: every replica answers from its snapshot.
        for replica in (first, second):
            assert await search_ids(replica, "retry budget") == ["guide/retries"]
        invoices = document_pb2.Document(document_id="billing/invoices", text="Invoices are issued monthly.")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await ingest(first, invoices)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        [retry] = [d for d in status_details(refused.value) if isinstance(d, error_details_pb2.RetryInfo)]
        assert retry.retry_delay.ToTimedelta().total_seconds() > 0

        await asyncio.to_thread(own_postgres.start)

        async def accepted() -> bool:
            try:
                await ingest(first, invoices)
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.UNAVAILABLE, error
                return False
            return True

        await wait_until(accepted, timeout_s=30, interval_s=0.2)

        # The other replica's follower reconnected by itself (no restart) and sees the new commit.
        async def seen() -> bool:
            return "billing/invoices" in await search_ids(second, "invoices monthly")

        await wait_until(seen, timeout_s=30)
    finally:
        for server in servers:
            await server.stop()


async def test_processes_sharing_one_sqlite_file_follow_each_others_commits(tmp_path: Path) -> None:
    """AGENTMESH_RAG_PROCESSES=N without a database URL: N knowledge bases on one SQLite file."""
    path = tmp_path / "rag" / "rag.sqlite3"
    databases = [await SQLiteDatabase.open(path), await SQLiteDatabase.open(path)]
    writer = await KnowledgeBase.open(tmp_path / "rag", database=databases[0])
    reader = await KnowledgeBase.open(tmp_path / "rag", database=databases[1], index_name="index-worker-1")
    loop = reader.follower(poll_s=0.05).start()
    try:
        await writer.ingest(DOCUMENTS[:1])

        async def found() -> bool:
            return [h.document.document_id for h in await reader.search("topic0", top_k=1)] == ["doc-0"]

        await wait_until(found, timeout_s=STALENESS_DEADLINE_S)
    finally:
        await loop.stop()
        await reader.close()
        await writer.close()
        for db in databases:
            await db.close()


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_replica_started_before_its_database_waits_not_serving_then_serves(
    unstarted_postgres: LocalPostgres, tmp_path: Path
) -> None:
    cluster = unstarted_postgres
    settings = RagSettings(
        port=0, data_dir=tmp_path / "replica", database_url=cluster.url(), drain_delay_s=0, grace_period_s=1
    )
    server = ManagedServer(await build_rag(settings))
    starting = asyncio.create_task(server.start())
    try:

        async def listening_not_serving() -> bool:
            if not server.port:
                return False
            try:
                return await health_status(address(server)) == "NOT_SERVING"
            except grpc.aio.AioRpcError:
                return False

        await wait_until(listening_not_serving, timeout_s=10)
        with pytest.raises(grpc.aio.AioRpcError) as early:
            await search_ids(address(server), "retry budget")
        assert early.value.code() == grpc.StatusCode.UNAVAILABLE
        assert not starting.done()

        await asyncio.to_thread(cluster.start)
        await asyncio.wait_for(starting, 60)
        assert await health_status(address(server)) == "SERVING"
        await ingest(address(server), RETRIES)
        assert await search_ids(address(server), "retry budget") == ["guide/retries"]
    finally:
        if not starting.done():
            starting.cancel()
        await server.stop()
