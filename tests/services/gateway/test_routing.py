"""The gateway routes by service name, forwards bytes, metadata, deadlines and errors unchanged."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import error_details_pb2

from agentmesh.rag.v1 import rag_service_pb2 as rag_pb
from agentmesh.rag.v1 import rag_service_pb2_grpc as rag_grpc
from rpcstatus.errors import status_details
from tests.system import System, start_gateway


class RecordingRag(rag_grpc.RagServiceServicer):
    """A RagService stand-in that records what reached it and sleeps on request."""

    def __init__(self) -> None:
        self.time_remaining: list[float | None] = []
        self.metadata: list[dict[str, str | bytes]] = []
        self.finished = asyncio.Event()

    async def Search(self, request: rag_pb.SearchRequest, context: grpc.aio.ServicerContext) -> rag_pb.SearchResponse:
        self.time_remaining.append(context.time_remaining())
        self.metadata.append(dict(context.invocation_metadata() or ()))
        if request.query == "slow":
            try:
                await asyncio.Event().wait()  # until the call's deadline cancels it
            finally:
                self.finished.set()
        context.set_trailing_metadata((("x-backend", "recording"),))
        return rag_pb.SearchResponse()


@pytest.fixture
async def recording_backend() -> AsyncIterator[tuple[RecordingRag, str]]:
    servicer = RecordingRag()
    server = grpc.aio.server()
    rag_grpc.add_RagServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, f"127.0.0.1:{port}"
    await server.stop(0)


@pytest.fixture
async def gateway_to_recorder(recording_backend: tuple[RecordingRag, str]) -> AsyncIterator[grpc.aio.Channel]:
    _, address = recording_backend
    gateway = await start_gateway({"rag": [address], "agent": [address]})
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        yield channel
    await gateway.stop()


async def test_a_short_deadline_ends_deadline_exceeded_and_the_backend_saw_it(
    recording_backend: tuple[RecordingRag, str], gateway_to_recorder: grpc.aio.Channel
) -> None:
    servicer, _ = recording_backend
    stub = rag_grpc.RagServiceStub(gateway_to_recorder)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        # Long enough to reach the backend on a busy machine; the backend never answers.
        await stub.Search(rag_pb.SearchRequest(query="slow"), timeout=3)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    [remaining] = servicer.time_remaining
    assert remaining is not None and 0 < remaining <= 3
    # The backend's handler was cancelled with the deadline rather than left running.
    await asyncio.wait_for(servicer.finished.wait(), timeout=10)


async def test_metadata_travels_to_the_backend_and_trailers_come_back(
    recording_backend: tuple[RecordingRag, str], gateway_to_recorder: grpc.aio.Channel
) -> None:
    servicer, _ = recording_backend
    stub = rag_grpc.RagServiceStub(gateway_to_recorder)
    call = stub.Search(
        rag_pb.SearchRequest(query="q"),
        metadata=(("authorization", "Bearer abc"), ("traceparent", "00-" + "a" * 32 + "-" + "b" * 16 + "-01")),
        timeout=5,
    )
    await call
    assert ("x-backend", "recording") in tuple(await call.trailing_metadata())
    seen = servicer.metadata[0]
    assert seen["authorization"] == "Bearer abc"
    assert str(seen["traceparent"]).startswith("00-aaaa")


async def test_unknown_services_and_methods_are_unimplemented(system: System) -> None:
    async with grpc.aio.insecure_channel(system.gateway_address) as channel:
        for method in ("/agentmesh.nope.v1.NopeService/Do", "/agentmesh.rag.v1.RagService/NoSuchMethod"):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await channel.unary_unary(method)(b"", timeout=5)
            assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED, method


async def test_backend_errors_reach_the_client_with_their_details(gateway_channel: grpc.aio.Channel) -> None:
    stub = rag_grpc.RagServiceStub(gateway_channel)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Search(rag_pb.SearchRequest(query="", top_k=5), timeout=5)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [bad_request] = [d for d in status_details(raised.value) if isinstance(d, error_details_pb2.BadRequest)]
    assert [v.field for v in bad_request.field_violations] == ["query"]


async def test_a_backend_that_is_down_is_unavailable(tmp_path: object) -> None:
    gateway = await start_gateway({"rag": ["127.0.0.1:1"], "agent": ["127.0.0.1:1"]})
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await rag_grpc.RagServiceStub(channel).Search(rag_pb.SearchRequest(query="q"), timeout=3)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await gateway.stop()
