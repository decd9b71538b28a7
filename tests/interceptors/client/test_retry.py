"""Retries: idempotent calls only, backoff with jitter, RetryInfo, deadline, attempt header, breaker."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

import grpc
import grpc.aio
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, duration_pb2, message_factory, wrappers_pb2
from google.protobuf.wrappers_pb2 import StringValue
from google.rpc import error_details_pb2

from interceptors.circuit_breaker import BreakerPolicy, CircuitBreaker, circuit_breaker_interceptors
from interceptors.retry import ATTEMPT_HEADER, Idempotency, RetryPolicy, retry_interceptors
from rpcstatus.details import error_status
from rpcstatus.errors import error_info
from tests.interceptors.echo_service import Echo, EchoClient, error_reason, open_channel, requests_of

Serve = Callable[..., Awaitable[tuple[Echo, int]]]
S = grpc.StatusCode


def build_pool() -> descriptor_pool.DescriptorPool:
    """test.v1.Echo with Unary NO_SIDE_EFFECTS and ServerStream IDEMPOTENT; the rest unmarked."""
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    file = descriptor_pb2.FileDescriptorProto(
        name="test/v1/echo.proto", package="test.v1", dependency=["google/protobuf/wrappers.proto"]
    )
    file.message_type.add(name="CreateRequest").field.add(
        name="request_id", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING
    )
    levels = {
        "Unary": descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS,
        "ServerStream": descriptor_pb2.MethodOptions.IDEMPOTENT,
    }
    for service_name, methods in (
        ("Echo", ("Unary", "ServerStream", "ClientStream", "Bidi")),
        ("Other", ("Call",)),
    ):
        service = file.service.add(name=service_name)
        for name in methods:
            method = service.method.add(
                name=name,
                input_type=".google.protobuf.StringValue",
                output_type=".google.protobuf.StringValue",
            )
            if name in levels:
                method.options.idempotency_level = levels[name]
    pool.Add(file)
    return pool


POOL = build_pool()


class Sleeps:
    """Records requested backoffs instead of sleeping, so tests run at full speed."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


class FixedRandom(random.Random):
    """Jitter pinned to its ceiling, so the backoff is exactly the configured one."""

    def uniform(self, a: float, b: float) -> float:
        return b


def retry_channel(port: int, sleeps: Sleeps, policy: RetryPolicy | None = None, *inner: object) -> grpc.aio.Channel:
    return open_channel(port, *retry_interceptors(policy, pool=POOL, sleep=sleeps, rng=random.Random(7)), *inner)


def retry_info(seconds: float) -> tuple[tuple[str, str | bytes], ...]:
    delay = duration_pb2.Duration()
    delay.FromMilliseconds(int(seconds * 1000))
    status = error_status(S.RESOURCE_EXHAUSTED, "slow down", error_details_pb2.RetryInfo(retry_delay=delay))
    return tuple(status.trailing_metadata)


async def failed_unary(channel: grpc.aio.Channel, *, call_timeout: float | None = None) -> grpc.aio.AioRpcError:
    """The error that ends a unary Echo call on ``channel`` (the test fails if it succeeds)."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await EchoClient(channel).unary(StringValue(value="x"), timeout=call_timeout)
    return caught.value


async def test_idempotent_unary_call_is_retried_until_it_succeeds(serve: Serve) -> None:
    echo, port = await serve()
    echo.fail_with = [S.UNAVAILABLE, S.UNAVAILABLE]
    sleeps = Sleeps()
    async with retry_channel(port, sleeps) as channel:
        reply = await EchoClient(channel).unary(StringValue(value="x"))
    assert reply.value == "anonymous|-:x"
    assert echo.calls["Unary"] == 3
    assert [md.get(ATTEMPT_HEADER) for md in echo.seen_metadata] == [None, "2", "3"]
    # Full jitter below an exponentially growing ceiling (0.05 s, then 0.1 s).
    assert 0 <= sleeps.delays[0] <= 0.05 and 0 <= sleeps.delays[1] <= 0.1


async def test_attempts_are_capped_and_the_last_failure_is_returned(serve: Serve) -> None:
    echo, port = await serve()
    echo.fail_with = [S.UNAVAILABLE] * 10
    async with retry_channel(port, Sleeps(), RetryPolicy(max_attempts=4)) as channel:
        error = await failed_unary(channel)
    assert error.code() is S.UNAVAILABLE
    assert echo.calls["Unary"] == 4


@pytest.mark.parametrize(
    ("send", "handler"),
    [
        (lambda client: client.other(StringValue(value="x")), "Unary"),  # Other/Call shares the unary handler
        (lambda client: client.client_stream(requests_of("a"), metadata=(("idempotency-key", "k"),)), "ClientStream"),
    ],
    ids=["a method not marked idempotent", "client streaming, even with an idempotency key"],
)
async def test_calls_that_may_not_be_repeated_are_not_retried(
    serve: Serve, send: Callable[[EchoClient], Awaitable[object]], handler: str
) -> None:
    echo, port = await serve()
    echo.fail_with = [S.UNAVAILABLE]
    async with retry_channel(port, Sleeps()) as channel:
        with pytest.raises(grpc.aio.AioRpcError):
            await send(EchoClient(channel))
    assert echo.calls[handler] == 1


async def test_an_idempotency_key_makes_any_method_retryable(serve: Serve) -> None:
    echo, port = await serve()
    echo.fail_with = [S.UNAVAILABLE]
    async with retry_channel(port, Sleeps()) as channel:
        reply = await EchoClient(channel).other(StringValue(value="x"), metadata=(("idempotency-key", "k-1"),))
    assert reply.value.endswith(":x")
    assert echo.calls["Unary"] == 2


@pytest.mark.parametrize(
    ("code", "wait_s"),
    [(S.INVALID_ARGUMENT, None), (S.RESOURCE_EXHAUSTED, 30)],
    ids=["a code that is not retryable", "a RetryInfo wait longer than allowed"],
)
async def test_a_failure_that_may_not_be_retried_ends_the_call_at_once(
    serve: Serve, code: grpc.StatusCode, wait_s: float | None
) -> None:
    echo, port = await serve()
    echo.fail_with = [code]
    if wait_s is not None:
        echo.trailing_on_failure = retry_info(wait_s)
    async with retry_channel(port, Sleeps()) as channel:
        error = await failed_unary(channel)
    assert error.code() is code
    assert echo.calls["Unary"] == 1


async def test_retry_info_from_the_server_sets_the_minimum_wait(serve: Serve) -> None:
    echo, port = await serve()
    echo.fail_with = [S.RESOURCE_EXHAUSTED]
    echo.trailing_on_failure = retry_info(0.75)
    sleeps = Sleeps()
    async with retry_channel(port, sleeps) as channel:
        await EchoClient(channel).unary(StringValue(value="x"))
    assert sleeps.delays == [pytest.approx(0.75)]


async def test_no_retry_whose_wait_would_pass_the_deadline(serve: Serve) -> None:
    echo, port = await serve()
    echo.fail_with = [S.RESOURCE_EXHAUSTED]
    echo.trailing_on_failure = retry_info(2)
    sleeps = Sleeps()
    async with retry_channel(port, sleeps) as channel:
        error = await failed_unary(channel, call_timeout=1)
    assert error.code() is S.RESOURCE_EXHAUSTED
    assert sleeps.delays == []


async def test_retries_get_only_the_time_left_of_the_deadline(serve: Serve) -> None:
    echo, port = await serve()
    echo.fail_with = [S.UNAVAILABLE]
    interceptors = retry_interceptors(
        RetryPolicy(initial_backoff_seconds=0.3, max_backoff_seconds=0.3),
        pool=POOL,
        rng=FixedRandom(),
    )
    async with open_channel(port, *interceptors) as channel:
        await EchoClient(channel).unary(StringValue(value="x"), timeout=5)
    first, second = echo.seen_time_remaining
    assert first is not None and second is not None
    # Slowness only widens the gap: the second attempt inherits the one deadline.
    assert second < first - 0.2


async def test_a_circuit_open_failure_ends_the_retries(serve: Serve) -> None:
    echo, port = await serve()
    echo.fail_with = [S.UNAVAILABLE] * 10
    cb = CircuitBreaker("echo", BreakerPolicy(consecutive_failures=2))
    async with retry_channel(port, Sleeps(), RetryPolicy(max_attempts=5), *circuit_breaker_interceptors(cb)) as ch:
        error = await failed_unary(ch)
    assert echo.calls["Unary"] == 2
    assert error_reason(error) == "CIRCUIT_OPEN"


async def test_knowing_the_breaker_no_retry_is_even_attempted_once_it_opens(serve: Serve) -> None:
    echo, port = await serve()
    echo.fail_with = [S.UNAVAILABLE] * 10
    cb = CircuitBreaker("echo", BreakerPolicy(consecutive_failures=2))
    sleeps = Sleeps()
    interceptors = [
        *retry_interceptors(RetryPolicy(max_attempts=5), breakers=cb, pool=POOL, sleep=sleeps),
        *circuit_breaker_interceptors(cb),
    ]
    async with open_channel(port, *interceptors) as ch:
        error = await failed_unary(ch)
    assert echo.calls["Unary"] == 2
    assert len(sleeps.delays) == 1  # one wait, before attempt 2; none after the breaker opened
    assert error.code() is S.UNAVAILABLE


async def test_a_server_stream_failing_before_its_first_response_is_retried(serve: Serve) -> None:
    echo, port = await serve()
    echo.fail_with = [S.UNAVAILABLE]
    async with retry_channel(port, Sleeps()) as channel:
        call = EchoClient(channel).server_stream(StringValue(value="s"))
        replies = [r.value async for r in call]
        assert await call.code() is S.OK
    assert replies == ["anonymous|-:s:0", "anonymous|-:s:1", "anonymous|-:s:2"]
    assert echo.calls["ServerStream"] == 2


async def test_a_server_stream_that_already_sent_a_response_is_not_retried(serve: Serve) -> None:
    echo, port = await serve()
    echo.fail_mid_stream = S.UNAVAILABLE
    received: list[str] = []
    async with retry_channel(port, Sleeps()) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for reply in EchoClient(channel).server_stream(StringValue(value="s")):
                received.append(reply.value)
                echo.mid_stream.set()  # the caller has seen a response; now the stream breaks
    assert caught.value.code() is S.UNAVAILABLE
    assert received == ["anonymous|-:s:0"]
    assert echo.calls["ServerStream"] == 1


def test_a_non_empty_request_id_makes_a_call_safe_to_repeat() -> None:
    create_request = message_factory.GetMessageClass(POOL.FindMessageTypeByName("test.v1.CreateRequest"))
    idempotency = Idempotency(pool=POOL)
    assert idempotency.call_is_safe("/test.v1.Other/Call", create_request(request_id="r-1"), None)
    assert not idempotency.call_is_safe("/test.v1.Other/Call", create_request(), None)
    assert not idempotency.call_is_safe("/test.v1.Other/Call", StringValue(value="x"), None)
    assert idempotency.method_is_safe("/test.v1.Echo/Unary")
    assert not idempotency.method_is_safe("/test.v1.Echo/Bidi")
    assert not idempotency.method_is_safe("/not.in.Pool/Method")


def test_error_info_domain_is_checked_for_circuit_open() -> None:
    # Only the mesh's own CIRCUIT_OPEN stops retries; same reason from elsewhere does not.
    info = error_info("CIRCUIT_OPEN")
    assert info.domain == "agentmesh.dev"
