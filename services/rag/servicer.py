"""RagService handlers: map protos to the knowledge base and its errors to AIP-193 statuses."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

import grpc
from google.protobuf import timestamp_pb2

from agentmesh.common.v1 import citation_pb2
from agentmesh.rag.v1 import document_pb2, rag_service_pb2, rag_service_pb2_grpc
from rpcstatus.errors import api_errors, failed_precondition, invalid_argument, not_found, unavailable
from services.rag.config import RagSettings
from services.rag.errors import DenseRetrievalDisabled, DocumentNotFound, InvalidArgument, NotReady
from services.rag.knowledge_base import (
    DocumentInput,
    Hit,
    IngestOutcome,
    IngestResult,
    KnowledgeBase,
    Mode,
    StoredDocument,
    chunk_id,
)

Context = grpc.aio.ServicerContext[object, object]

_OUTCOMES = {
    IngestOutcome.CREATED: rag_service_pb2.IngestResult.OUTCOME_CREATED,
    IngestOutcome.REPLACED: rag_service_pb2.IngestResult.OUTCOME_REPLACED,
    IngestOutcome.UNCHANGED: rag_service_pb2.IngestResult.OUTCOME_UNCHANGED,
}
_MODES = {
    rag_service_pb2.SearchRequest.MODE_UNSPECIFIED: None,
    rag_service_pb2.SearchRequest.MODE_BM25: Mode.BM25,
    rag_service_pb2.SearchRequest.MODE_DENSE: Mode.DENSE,
    rag_service_pb2.SearchRequest.MODE_HYBRID: Mode.HYBRID,
}
# A stream is ingested in batches: bounded memory, and one index rebuild per batch, not per message.
_STREAM_BATCH_BYTES = 8 * 1024 * 1024


@contextlib.contextmanager
def _domain_errors() -> Iterator[None]:
    """Translate knowledge-base errors into the API errors `api_errors` sends as the call's status.

    A database that is away raises `DatabaseUnavailable`, already an API error (UNAVAILABLE with
    RetryInfo): writes and document reads need the database, searches never do."""
    try:
        yield
    except InvalidArgument as error:
        raise invalid_argument(error.violations) from error
    except DocumentNotFound as error:
        raise not_found("document", error.document_id) from error
    except DenseRetrievalDisabled as error:
        raise failed_precondition(str(error), reason="INVALID_STATE", feature="dense_retrieval") from error
    except NotReady as error:
        raise unavailable(str(error), reason="BACKEND_UNAVAILABLE", retry_after_s=1.0, backend="database") from error


def _document_input(document: document_pb2.Document) -> DocumentInput:
    return DocumentInput(
        document_id=document.document_id,
        text=document.text,
        metadata=dict(document.metadata),
        content_type=document.content_type,
    )


def _result(result: IngestResult) -> rag_service_pb2.IngestResult:
    return rag_service_pb2.IngestResult(
        document_id=result.document_id, outcome=_OUTCOMES[result.outcome], chunk_count=result.chunk_count
    )


def _search_result(hit: Hit) -> document_pb2.SearchResult:
    chunk = hit.chunk
    return document_pb2.SearchResult(
        citation=citation_pb2.Citation(
            document_id=chunk.document_id,
            chunk_id=chunk_id(chunk),
            start_offset=chunk.start,
            end_offset=chunk.end,
            quote=chunk.text,
            score=hit.score,
        ),
        score=hit.score,
        metadata=dict(hit.document.metadata),
        heading=chunk.heading,
    )


def _document(stored: StoredDocument) -> document_pb2.Document:
    record = stored.record
    update_time = timestamp_pb2.Timestamp()
    update_time.FromNanoseconds(int(record.update_time * 1e9))
    return document_pb2.Document(
        document_id=record.document_id,
        text=stored.text,
        metadata=dict(record.metadata),
        content_type=record.content_type,
        content_hash=record.content_hash,
        chunk_count=record.chunk_count,
        update_time=update_time,
    )


class RagServicer(rag_service_pb2_grpc.RagServiceServicer):
    def __init__(self, knowledge: KnowledgeBase, settings: RagSettings) -> None:
        self._knowledge = knowledge
        self._settings = settings

    @api_errors
    async def IngestDocuments(
        self, request: rag_service_pb2.IngestDocumentsRequest, context: Context
    ) -> rag_service_pb2.IngestDocumentsResponse:
        with _domain_errors():
            results = await self._knowledge.ingest([_document_input(d) for d in request.documents], field="documents")
        return rag_service_pb2.IngestDocumentsResponse(results=[_result(r) for r in results])

    @api_errors
    async def StreamIngestDocuments(
        self, request_iterator: AsyncIterator[rag_service_pb2.StreamIngestDocumentsRequest], context: Context
    ) -> rag_service_pb2.StreamIngestDocumentsResponse:
        """Ingest in batches as messages arrive. On an invalid message, every message before it is
        ingested, none after, and the error says how many were."""
        knowledge = self._knowledge
        results: list[rag_service_pb2.IngestResult] = []
        pending: list[DocumentInput] = []
        pending_ids: set[str] = set()
        pending_bytes = 0

        async def flush(*, last: bool = False) -> None:
            nonlocal pending_bytes
            if pending:
                with _domain_errors():
                    # Only the last batch waits for the index: earlier ones are committed and
                    # indexed in the background, so a long stream is not one rebuild per batch.
                    ingested = await knowledge.ingest(pending, field="document", wait_searchable=last)
                results.extend(_result(r) for r in ingested)
                pending.clear()
                pending_ids.clear()
                pending_bytes = 0

        index = 0
        async for message in request_iterator:
            document = _document_input(message.document)
            violations = knowledge.document_violations(document, field="document")
            if violations:
                await flush(last=True)
                raise invalid_argument(
                    (field, f"{description} (stream message {index}; the {len(results)} before it were ingested)")
                    for field, description in violations
                )
            size = message.document.ByteSize()
            # A batch holds distinct IDs; a repeated ID starts a new batch, so the later version wins.
            if (
                document.document_id in pending_ids
                or len(pending) >= self._settings.max_batch_documents
                or pending_bytes + size > _STREAM_BATCH_BYTES
            ):
                await flush()
            pending.append(document)
            pending_ids.add(document.document_id)
            pending_bytes += size
            index += 1
        if index == 0:
            raise invalid_argument([("document", "the stream carried no documents")])
        await flush(last=True)
        return rag_service_pb2.StreamIngestDocumentsResponse(results=results)

    @api_errors
    async def Search(self, request: rag_service_pb2.SearchRequest, context: Context) -> rag_service_pb2.SearchResponse:
        with _domain_errors():
            hits = await self._knowledge.search(
                request.query,
                top_k=request.top_k,
                metadata_filter=dict(request.metadata_filter),
                mode=_MODES.get(request.mode),
            )
        return rag_service_pb2.SearchResponse(results=[_search_result(h) for h in hits])

    @api_errors
    async def GetDocument(
        self, request: rag_service_pb2.GetDocumentRequest, context: Context
    ) -> rag_service_pb2.GetDocumentResponse:
        with _domain_errors():
            stored = await self._knowledge.get(request.document_id)
        return rag_service_pb2.GetDocumentResponse(document=_document(stored))

    @api_errors
    async def DeleteDocument(
        self, request: rag_service_pb2.DeleteDocumentRequest, context: Context
    ) -> rag_service_pb2.DeleteDocumentResponse:
        with _domain_errors():
            await self._knowledge.delete(request.document_id)
        return rag_service_pb2.DeleteDocumentResponse()
