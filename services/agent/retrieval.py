"""The agent's retrieval tool: the RAG service's Search RPC, seen as a ``Retriever``."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import grpc

from agentmesh.rag.v1 import rag_service_pb2, rag_service_pb2_grpc
from services.agent.decision import Passage


class RetrievalFailed(Exception):
    pass


class RagRetriever:
    def __init__(self, channel: Callable[[], grpc.aio.Channel], *, timeout_s: float) -> None:
        # The channel is asked for per call: with a version split (route weights) each call may
        # go to another version's channel. Stubs are built once per channel, not per call.
        self._channel = channel
        self._stubs: dict[grpc.aio.Channel, rag_service_pb2_grpc.RagServiceAsyncStub] = {}
        self._timeout_s = timeout_s

    def _stub(self) -> rag_service_pb2_grpc.RagServiceAsyncStub:
        channel = self._channel()
        stub = self._stubs.get(channel)
        if stub is None:
            stub = self._stubs[channel] = rag_service_pb2_grpc.RagServiceStub(channel)
        return stub

    async def __call__(self, query: str, metadata_filter: Mapping[str, str], top_k: int) -> list[Passage]:
        request = rag_service_pb2.SearchRequest(query=query, top_k=top_k, metadata_filter=dict(metadata_filter))
        try:
            response = await self._stub().Search(request, timeout=self._timeout_s)
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
                heading=result.heading,
            )
            for result in response.results
        ]
