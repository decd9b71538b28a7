"""The agent's retrieval tool: the RAG service's Search RPC, seen as a ``Retriever``."""

from __future__ import annotations

from collections.abc import Mapping

import grpc

from agentmesh.rag.v1 import rag_service_pb2, rag_service_pb2_grpc
from services.agent.decision import Passage


class RetrievalFailed(Exception):
    pass


class RagRetriever:
    def __init__(self, stub: rag_service_pb2_grpc.RagServiceAsyncStub, *, timeout_s: float) -> None:
        self._stub = stub
        self._timeout_s = timeout_s

    async def __call__(self, query: str, metadata_filter: Mapping[str, str], top_k: int) -> list[Passage]:
        request = rag_service_pb2.SearchRequest(query=query, top_k=top_k, metadata_filter=dict(metadata_filter))
        try:
            response = await self._stub.Search(request, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as error:
            raise RetrievalFailed(f"knowledge retrieval failed: {error.code().name}: {error.details()}") from error
        return [
            Passage(
                document_id=result.citation.document_id,
                chunk_id=result.citation.chunk_id,
                start_offset=result.citation.start_offset,
                end_offset=result.citation.end_offset,
                text=result.citation.quote,
                score=result.score,
            )
            for result in response.results
        ]
