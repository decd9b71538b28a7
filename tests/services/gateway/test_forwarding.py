"""What the gateway's proxy does to each forwarded call, with no client interceptor on its channels:
response headers relayed in every call shape, retries of idempotent calls (RetryInfo honoured,
stopping at an open breaker), the backend's circuit breaker, and the deadline handed on."""

from __future__ import annotations

import functools
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2, wrappers_pb2
from google.protobuf.wrappers_pb2 import StringValue

from interceptors.circuit_breaker import BreakerPolicy
from interceptors.retry import ATTEMPT_HEADER, Retrier, RetryPolicy
from runtime import resilience
from runtime.bootstrap import ManagedServer
from runtime.resilience import UpstreamResilience
from tests.interceptors.client.test_retry import POOL, Sleeps, retry_info
from tests.interceptors.echo_service import (
    OTHER_SERVICE,
    SERVICE,
    Echo,
    EchoClient,
    error_reason,
    requests_of,
    serving,
)
from tests.system import start_gateway

S = grpc.StatusCode
HEADERS = (("x-backend", "echo"),)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[tuple[Echo, int]]]]:
    async with serving() as start:
        yield start


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> Sleeps:
    """The gateway's retry waits are recorded instead of slept."""
    recorded = Sleeps()
    monkeypatch.setattr(resilience, "Retrier", functools.partial(Retrier, sleep=recorded, rng=random.Random(7)))
    return recorded


@pytest.fixture
def echo_descriptor_set(tmp_path: Path) -> Path:
    """test.v1.Echo (Unary NO_SIDE_EFFECTS, ServerStream IDEMPOTENT, the rest unmarked) as a descriptor set."""
    file_set = descriptor_pb2.FileDescriptorSet()
    for name in (wrappers_pb2.DESCRIPTOR.name, "test/v1/echo.proto"):
        POOL.FindFileByName(name).CopyToProto(file_set.file.add())
    # The retry tests' pool marks idempotency only; the gateway also needs each method's shape.
    shapes = {"ServerStream": (False, True), "ClientStream": (True, False), "Bidi": (True, True)}
    for service in file_set.file[1].service:
        for method in service.method:
            method.client_streaming, method.server_streaming = shapes.get(method.name, (False, False))
    path = tmp_path / "echo.pb"
    path.write_bytes(file_set.SerializeToString())
    return path


Gateway = Callable[..., Awaitable[tuple[Echo, EchoClient]]]


@pytest.fixture
async def via_gateway(
    serve: Callable[..., Awaitable[tuple[Echo, int]]], echo_descriptor_set: Path, sleeps: Sleeps
) -> AsyncIterator[Gateway]:
    """``await via_gateway(retry=..., breaker=...)`` -> (the echo backend, a client of it through a gateway)."""
    gateways: list[ManagedServer] = []
    channels: list[grpc.aio.Channel] = []

    async def start(
        *, retry: RetryPolicy | None = None, breaker: BreakerPolicy | None = None
    ) -> tuple[Echo, EchoClient]:
        echo, port = await serve()
        gateway = await start_gateway(
            {"echo": [f"127.0.0.1:{port}"]},
            descriptor_set=echo_descriptor_set,
            routes={SERVICE: "echo", OTHER_SERVICE: "echo"},
            upstream_resilience=UpstreamResilience(
                retry=retry or RetryPolicy(), breaker=breaker or BreakerPolicy(consecutive_failures=100)
            ),
        )
        gateways.append(gateway)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}")
        channels.append(channel)
        return echo, EchoClient(channel)

    try:
        yield start
    finally:
        for channel in channels:
            await channel.close()
        for gateway in gateways:
            await gateway.stop()


async def test_response_headers_reach_the_client_on_unary_calls(via_gateway: Gateway) -> None:
    echo, client = await via_gateway()
    echo.headers = HEADERS
    call = client.unary(StringValue(value="x"), timeout=5)
    await call
    assert HEADERS[0] in tuple(await call.initial_metadata())


async def test_response_headers_reach_the_client_on_client_streaming_calls(via_gateway: Gateway) -> None:
    echo, client = await via_gateway()
    echo.headers = HEADERS
    call = client.client_stream(requests_of("a", "b"), timeout=5)
    assert (await call).value.endswith(":a,b")
    assert HEADERS[0] in tuple(await call.initial_metadata())


async def test_response_headers_reach_the_client_on_streaming_calls(via_gateway: Gateway) -> None:
    echo, client = await via_gateway()
    echo.headers = HEADERS
    call = client.server_stream(StringValue(value="s"), timeout=5)
    assert HEADERS[0] in tuple(await call.initial_metadata())
    assert [r.value async for r in call][-1].endswith(":s:2")


async def test_response_headers_reach_the_client_with_a_failure(via_gateway: Gateway) -> None:
    echo, client = await via_gateway()
    echo.headers = HEADERS
    echo.fail_with = [S.NOT_FOUND]
    call = client.unary(StringValue(value="x"), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() is S.NOT_FOUND
    assert HEADERS[0] in tuple(caught.value.initial_metadata())


async def test_an_idempotent_call_is_retried_until_it_succeeds(via_gateway: Gateway, sleeps: Sleeps) -> None:
    echo, client = await via_gateway()
    echo.fail_with = [S.UNAVAILABLE, S.UNAVAILABLE]
    reply = await client.unary(StringValue(value="x"), timeout=5)
    assert reply.value.endswith(":x")
    assert echo.calls["Unary"] == 3
    assert [md.get(ATTEMPT_HEADER) for md in echo.seen_metadata] == [None, "2", "3"]
    # Full jitter below an exponentially growing ceiling (0.05 s, then 0.1 s).
    assert 0 <= sleeps.delays[0] <= 0.05 and 0 <= sleeps.delays[1] <= 0.1


async def test_attempts_are_capped_and_the_last_failure_is_relayed(via_gateway: Gateway) -> None:
    echo, client = await via_gateway(retry=RetryPolicy(max_attempts=4))
    echo.fail_with = [S.UNAVAILABLE] * 10
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.unary(StringValue(value="x"), timeout=5)
    assert caught.value.code() is S.UNAVAILABLE
    assert echo.calls["Unary"] == 4


async def test_a_method_not_marked_idempotent_is_not_retried(via_gateway: Gateway) -> None:
    echo, client = await via_gateway()
    echo.fail_with = [S.UNAVAILABLE]
    with pytest.raises(grpc.aio.AioRpcError):
        await client.other(StringValue(value="x"), timeout=5)
    assert echo.calls["Unary"] == 1  # Other/Call shares the unary handler


async def test_an_idempotency_key_makes_any_method_retryable(via_gateway: Gateway) -> None:
    echo, client = await via_gateway()
    echo.fail_with = [S.UNAVAILABLE]
    reply = await client.other(StringValue(value="x"), metadata=(("idempotency-key", "k-1"),), timeout=5)
    assert reply.value.endswith(":x")
    assert echo.calls["Unary"] == 2


async def test_a_code_that_is_not_retryable_ends_the_call_at_once(via_gateway: Gateway) -> None:
    echo, client = await via_gateway()
    echo.fail_with = [S.INVALID_ARGUMENT]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.unary(StringValue(value="x"), timeout=5)
    assert caught.value.code() is S.INVALID_ARGUMENT
    assert echo.calls["Unary"] == 1


async def test_retry_info_from_the_backend_sets_the_minimum_wait(via_gateway: Gateway, sleeps: Sleeps) -> None:
    echo, client = await via_gateway()
    echo.fail_with = [S.RESOURCE_EXHAUSTED]
    echo.trailing_on_failure = retry_info(0.75)
    await client.unary(StringValue(value="x"), timeout=5)
    assert sleeps.delays == [pytest.approx(0.75)]


async def test_a_retry_info_wait_longer_than_allowed_is_not_retried(via_gateway: Gateway) -> None:
    echo, client = await via_gateway()
    echo.fail_with = [S.RESOURCE_EXHAUSTED]
    echo.trailing_on_failure = retry_info(30)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.unary(StringValue(value="x"), timeout=5)
    assert caught.value.code() is S.RESOURCE_EXHAUSTED
    assert echo.calls["Unary"] == 1


async def test_retries_stop_once_the_breaker_opens_and_then_calls_fail_fast(
    via_gateway: Gateway, sleeps: Sleeps
) -> None:
    echo, client = await via_gateway(
        retry=RetryPolicy(max_attempts=5), breaker=BreakerPolicy(consecutive_failures=2, open_seconds=60)
    )
    echo.fail_with = [S.UNAVAILABLE] * 10
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.unary(StringValue(value="x"), timeout=5)
    assert caught.value.code() is S.UNAVAILABLE
    assert echo.calls["Unary"] == 2
    assert len(sleeps.delays) == 1  # one wait, before attempt 2; none after the breaker opened

    with pytest.raises(grpc.aio.AioRpcError) as fast:
        await client.unary(StringValue(value="y"), timeout=5)
    assert fast.value.code() is S.UNAVAILABLE
    assert error_reason(fast.value) == "CIRCUIT_OPEN"
    assert echo.calls["Unary"] == 2  # nothing sent to the backend


async def test_a_server_stream_failing_before_its_first_response_is_retried(via_gateway: Gateway) -> None:
    echo, client = await via_gateway()
    echo.fail_with = [S.UNAVAILABLE]
    call = client.server_stream(StringValue(value="s"), timeout=5)
    replies = [r.value async for r in call]
    assert await call.code() is S.OK
    assert [r.rsplit(":", 2)[1:] for r in replies] == [["s", "0"], ["s", "1"], ["s", "2"]]
    assert echo.calls["ServerStream"] == 2


async def test_a_server_stream_that_already_sent_a_response_is_not_retried(via_gateway: Gateway) -> None:
    echo, client = await via_gateway()
    echo.headers = HEADERS  # relayed once, before the first message; the failure does not resend them
    echo.fail_mid_stream = S.UNAVAILABLE
    received: list[str] = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for reply in client.server_stream(StringValue(value="s"), timeout=5):
            received.append(reply.value)
            echo.mid_stream.set()  # the caller has seen a response; now the stream breaks
    assert caught.value.code() is S.UNAVAILABLE
    assert len(received) == 1
    assert echo.calls["ServerStream"] == 1


async def test_client_streaming_calls_are_never_retried(via_gateway: Gateway) -> None:
    echo, client = await via_gateway()
    echo.fail_with = [S.UNAVAILABLE]
    with pytest.raises(grpc.aio.AioRpcError):
        await client.client_stream(requests_of("a"), metadata=(("idempotency-key", "k"),), timeout=5)
    assert echo.calls["ClientStream"] == 1


async def test_every_attempt_of_a_failing_backend_counts_toward_its_breaker(via_gateway: Gateway) -> None:
    echo, client = await via_gateway(
        retry=RetryPolicy(max_attempts=1), breaker=BreakerPolicy(consecutive_failures=3, open_seconds=60)
    )
    echo.fail_with = [S.UNAVAILABLE] * 10
    for _ in range(3):
        with pytest.raises(grpc.aio.AioRpcError):
            await client.client_stream(requests_of("a"), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as fast:
        await client.unary(StringValue(value="x"), timeout=5)
    assert error_reason(fast.value) == "CIRCUIT_OPEN"
    assert echo.calls == {"ClientStream": 3}


async def test_the_backend_gets_the_callers_deadline_less_the_margin(
    serve: Callable[..., Awaitable[tuple[Echo, int]]], echo_descriptor_set: Path
) -> None:
    echo, port = await serve()
    gateway = await start_gateway(
        {"echo": [f"127.0.0.1:{port}"]},
        descriptor_set=echo_descriptor_set,
        routes={SERVICE: "echo"},
        deadline_margin_s=1.5,
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
            await EchoClient(channel).unary(StringValue(value="x"), timeout=3)
    finally:
        await gateway.stop()
    [remaining] = echo.seen_time_remaining
    # 3 s less the 1.5 s margin; grpc rounds the timeout it sends up a little (HPACK-friendly values).
    assert remaining is not None and 0 < remaining <= 1.7


async def test_a_bidi_stream_is_relayed_message_by_message_and_never_retried(via_gateway: Gateway) -> None:
    echo, client = await via_gateway()
    echo.headers = HEADERS
    call = client.bidi(requests_of("a", "b", "c"), timeout=5)
    assert HEADERS[0] in tuple(await call.initial_metadata())
    assert [r.value.rsplit(":", 1)[1] async for r in call] == ["a", "b", "c"]
    echo.fail_with = [S.UNAVAILABLE]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in client.bidi(requests_of("d"), timeout=5):
            pass
    assert caught.value.code() is S.UNAVAILABLE
    assert echo.calls["Bidi"] == 2
