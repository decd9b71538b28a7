"""RagService handlers: validate, call the document store, map to protos."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from google.protobuf import timestamp_pb2

from agentmesh.common.v1 import citation_pb2
from agentmesh.rag.v1 import document_pb2, rag_service_pb2, rag_service_pb2_grpc
from runtime.errors import api_errors, failed_precondition, invalid_argument, not_found
from services.rag.config import RagSettings
from services.rag.document_store import DocumentStore, StoredDocument
from services.rag.validation import (
    document_violations,
    validate_document_id,
    validate_ingest,
    validate_search,
)

Context = grpc.aio.ServicerContext[object, object]

_OUTCOMES = {
    "created": rag_service_pb2.IngestResult.OUTCOME_CREATED,
    "replaced": rag_service_pb2.IngestResult.OUTCOME_REPLACED,
    "unchanged": rag_service_pb2.IngestResult.OUTCOME_UNCHANGED,
}


def _to_proto(doc: StoredDocument) -> document_pb2.Document:
    update_time = timestamp_pb2.Timestamp()
    update_time.FromNanoseconds(int(doc.update_time * 1e9))
    return document_pb2.Document(
        document_id=doc.document_id,
        text=doc.text,
        metadata=dict(doc.metadata),
        content_type=doc.content_type,
        content_hash=doc.content_hash,
        chunk_count=doc.chunk_count,
        update_time=update_time,
    )


class RagServicer(rag_service_pb2_grpc.RagServiceServicer):
    def __init__(self, store: DocumentStore, settings: RagSettings) -> None:
        self._store = store
        self._settings = settings

    async def _ingest_one(self, doc: document_pb2.Document) -> rag_service_pb2.IngestResult:
        outcome, stored = await self._store.upsert(
            doc.document_id, doc.text, doc.metadata, doc.content_type or "text/plain"
        )
        return rag_service_pb2.IngestResult(
            document_id=doc.document_id, outcome=_OUTCOMES[outcome], chunk_count=stored.chunk_count
        )

    @api_errors
    async def IngestDocuments(
        self, request: rag_service_pb2.IngestDocumentsRequest, context: Context
    ) -> rag_service_pb2.IngestDocumentsResponse:
        validate_ingest(request, self._settings)
        results = [await self._ingest_one(doc) for doc in request.documents]
        return rag_service_pb2.IngestDocumentsResponse(results=results)

    @api_errors
    async def StreamIngestDocuments(
        self, request_iterator: AsyncIterator[rag_service_pb2.StreamIngestDocumentsRequest], context: Context
    ) -> rag_service_pb2.StreamIngestDocumentsResponse:
        results = []
        index = 0
        async for message in request_iterator:
            violations = document_violations(f"document (stream message {index})", message.document, self._settings)
            if violations:
                raise invalid_argument(violations)
            results.append(await self._ingest_one(message.document))
            index += 1
        return rag_service_pb2.StreamIngestDocumentsResponse(results=results)

    @api_errors
    async def Search(self, request: rag_service_pb2.SearchRequest, context: Context) -> rag_service_pb2.SearchResponse:
        top_k = validate_search(request, self._settings)
        if request.mode == rag_service_pb2.SearchRequest.MODE_DENSE:
            raise failed_precondition(
                "dense retrieval is not enabled on this server; use MODE_BM25 or enable it",
                reason="DENSE_DISABLED",
            )
        hits = await self._store.search(request.query, top_k=top_k, metadata_filter=request.metadata_filter)
        return rag_service_pb2.SearchResponse(
            results=[
                document_pb2.SearchResult(
                    citation=citation_pb2.Citation(
                        document_id=h.document_id,
                        chunk_id=h.chunk_id,
                        start_offset=h.start,
                        end_offset=h.end,
                        quote=h.text,
                        score=h.score,
                    ),
                    score=h.score,
                    metadata=dict(h.metadata),
                )
                for h in hits
            ]
        )

    @api_errors
    async def GetDocument(
        self, request: rag_service_pb2.GetDocumentRequest, context: Context
    ) -> rag_service_pb2.GetDocumentResponse:
        validate_document_id(request.document_id)
        doc = await self._store.get(request.document_id)
        if doc is None:
            raise not_found("document", request.document_id)
        return rag_service_pb2.GetDocumentResponse(document=_to_proto(doc))

    @api_errors
    async def DeleteDocument(
        self, request: rag_service_pb2.DeleteDocumentRequest, context: Context
    ) -> rag_service_pb2.DeleteDocumentResponse:
        validate_document_id(request.document_id)
        if not await self._store.delete(request.document_id):
            raise not_found("document", request.document_id)
        return rag_service_pb2.DeleteDocumentResponse()
