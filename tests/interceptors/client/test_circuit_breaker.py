"""Circuit breaker: closed -> open -> half-open -> closed, per target, failing fast while open."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf.wrappers_pb2 import StringValue
from google.rpc import error_details_pb2
from pydantic import ValidationError

from interceptors.circuit_breaker import (
    BreakerPolicy,
    BreakerSet,
    BreakerState,
    CircuitBreaker,
    Permit,
    circuit_breaker_interceptors,
)
from rpcstatus.details import find_detail
from tests.interceptors.echo_service import Echo, EchoClient, error_reason, open_channel, requests_of, start_server

Serve = Callable[..., Awaitable[tuple[Echo, int]]]
S = grpc.StatusCode

POLICY = BreakerPolicy(consecutive_failures=3, failure_rate=0.5, minimum_calls=6, window_seconds=10, open_seconds=5)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(policy: BreakerPolicy = POLICY, **options: Any) -> tuple[CircuitBreaker, FakeClock, list[Any]]:
    clock = FakeClock()
    changes: list[Any] = []
    cb = CircuitBreaker(
        "rag:50051",
        policy,
        clock=clock,
        on_state_change=lambda target, old, new: changes.append((target, old, new)),
        **options,
    )
    return cb, clock, changes


def state(cb: CircuitBreaker) -> BreakerState:
    # A function, not the property, so the type checker does not pin it after one check.
    return cb.state


def call(cb: CircuitBreaker, code: grpc.StatusCode) -> bool:
    """One call through the breaker; False if it failed fast."""
    permit = cb.acquire()
    if permit is None:
        return False
    cb.record(permit, code)
    return True


def first_probe(cb: CircuitBreaker, clock: FakeClock) -> Permit:
    """Open the circuit (3 failures), let its open period pass: the permit of the first probe."""
    for _ in range(3):
        call(cb, S.UNAVAILABLE)
    clock.now += 5
    probe = cb.acquire()
    assert probe is not None
    return probe


def test_opens_after_consecutive_failures_and_then_fails_fast() -> None:
    cb, _, changes = breaker()
    assert [call(cb, S.UNAVAILABLE) for _ in range(3)] == [True, True, True]
    assert state(cb) is BreakerState.OPEN
    assert cb.acquire() is None
    assert changes == [("rag:50051", BreakerState.CLOSED, BreakerState.OPEN)]


def test_answers_that_prove_the_backend_is_up_do_not_count_as_failures() -> None:
    cb, _, _ = breaker()
    for code in (S.NOT_FOUND, S.INVALID_ARGUMENT, S.PERMISSION_DENIED, S.RESOURCE_EXHAUSTED, S.OK) * 3:
        call(cb, code)
    assert state(cb) is BreakerState.CLOSED


def test_a_success_resets_the_consecutive_count() -> None:
    cb, _, _ = breaker()
    for code in (S.UNAVAILABLE, S.UNAVAILABLE, S.OK, S.UNAVAILABLE, S.UNAVAILABLE):
        call(cb, code)
    assert state(cb) is BreakerState.CLOSED


def test_opens_on_failure_rate_within_the_window() -> None:
    cb, _, _ = breaker()
    # Alternating: never 3 in a row, but 3 failures of 6 calls is the configured 50%.
    for code in (S.OK, S.INTERNAL, S.OK, S.DEADLINE_EXCEEDED, S.OK):
        call(cb, code)
    assert state(cb) is BreakerState.CLOSED
    call(cb, S.UNAVAILABLE)
    assert state(cb) is BreakerState.OPEN


def test_failures_older_than_the_window_no_longer_count() -> None:
    cb, clock, _ = breaker()
    for code in (S.INTERNAL, S.OK, S.INTERNAL, S.OK):
        call(cb, code)
    clock.now += 11
    for code in (S.OK, S.OK, S.OK, S.OK, S.INTERNAL, S.OK):
        call(cb, code)
    assert state(cb) is BreakerState.CLOSED


def test_half_open_after_the_open_period_lets_limited_probes_through() -> None:
    cb, clock, _ = breaker(POLICY.model_copy(update={"half_open_probes": 2}))
    for _ in range(3):
        call(cb, S.UNAVAILABLE)
    clock.now += 4.9
    assert cb.acquire() is None
    clock.now += 0.2
    assert state(cb) is BreakerState.HALF_OPEN
    first, second = cb.acquire(), cb.acquire()
    assert first is not None and second is not None
    assert cb.acquire() is None  # both probe slots taken
    cb.record(first, S.OK)
    assert state(cb) is BreakerState.HALF_OPEN
    cb.record(second, S.OK)
    assert state(cb) is BreakerState.CLOSED


def test_a_failed_probe_reopens_the_circuit() -> None:
    cb, clock, changes = breaker()
    probe = first_probe(cb, clock)
    cb.record(probe, S.DEADLINE_EXCEEDED)
    assert state(cb) is BreakerState.OPEN
    assert cb.retry_after() == pytest.approx(5)
    assert [(old, new) for _, old, new in changes] == [
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.OPEN),
    ]


def test_a_cancelled_probe_frees_its_slot_without_deciding_anything() -> None:
    cb, clock, _ = breaker()
    probe = first_probe(cb, clock)
    cb.release(probe)
    assert state(cb) is BreakerState.HALF_OPEN
    assert cb.acquire() is not None


def test_late_outcomes_of_calls_admitted_before_a_transition_are_ignored() -> None:
    cb, clock, _ = breaker()
    slow = cb.acquire()
    assert slow is not None
    probe = first_probe(cb, clock)
    cb.record(slow, S.UNAVAILABLE)  # from before the breaker opened
    assert state(cb) is BreakerState.HALF_OPEN
    cb.record(probe, S.OK)
    assert state(cb) is BreakerState.CLOSED


def test_unknown_failure_code_names_are_rejected() -> None:
    with pytest.raises(ValidationError):
        BreakerPolicy(failure_codes=("UNAVAILABLE", "BROKEN"))
    with pytest.raises(ValidationError):
        BreakerPolicy(failure_codes=("OK",))


# --- through real servers -------------------------------------------------------------------


def assert_circuit_open(error: grpc.aio.AioRpcError) -> None:
    assert error.code() is S.UNAVAILABLE
    assert error_reason(error) == "CIRCUIT_OPEN"
    assert find_detail(error, error_details_pb2.RetryInfo) is not None


async def unary_after_failures(client: EchoClient, failures: int) -> grpc.aio.AioRpcError:
    """``failures`` unary calls that fail, then the error of one more (which must fail too)."""
    for _ in range(failures):
        with pytest.raises(grpc.aio.AioRpcError):
            await client.unary(StringValue(value="x"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.unary(StringValue(value="x"))
    return caught.value


async def test_unary_calls_fail_fast_once_the_backend_keeps_failing(serve: Serve) -> None:
    echo, port = await serve()
    echo.fail_with = [S.UNAVAILABLE] * 3
    cb, _, _ = breaker()
    async with open_channel(port, *circuit_breaker_interceptors(cb)) as channel:
        client = EchoClient(channel)
        error = await unary_after_failures(client, 3)
    assert_circuit_open(error)
    assert echo.calls["Unary"] == 3  # the fast failure never reached the server


async def test_streaming_failures_open_the_circuit_and_every_kind_then_fails_fast(serve: Serve) -> None:
    echo, port = await serve()
    echo.fail_with = [S.INTERNAL] * 3
    opened = asyncio.Event()

    def on_change(_target: str, _old: BreakerState, new: BreakerState) -> None:
        if new is BreakerState.OPEN:
            opened.set()

    cb = CircuitBreaker("echo", POLICY, on_state_change=on_change)
    async with open_channel(port, *circuit_breaker_interceptors(cb)) as channel:
        client = EchoClient(channel)
        for _ in range(3):
            with pytest.raises(grpc.aio.AioRpcError):
                async for _ in client.server_stream(StringValue(value="s")):
                    pass
        # The outcome of a streaming call is recorded from its done callback.
        await asyncio.wait_for(opened.wait(), timeout=10)

        with pytest.raises(grpc.aio.AioRpcError) as server_stream:
            async for _ in client.server_stream(StringValue(value="s")):
                pass
        with pytest.raises(grpc.aio.AioRpcError) as client_stream:
            await client.client_stream(requests_of("a"))
        with pytest.raises(grpc.aio.AioRpcError) as bidi:
            async for _ in client.bidi(requests_of("a")):
                pass
    for caught in (server_stream, client_stream, bidi):
        assert_circuit_open(caught.value)
    assert echo.calls == {"ServerStream": 3}


async def test_successful_streams_keep_the_circuit_closed(serve: Serve) -> None:
    _, port = await serve()
    cb, _, _ = breaker()
    async with open_channel(port, *circuit_breaker_interceptors(cb)) as channel:
        client = EchoClient(channel)
        for _ in range(5):
            assert [r.value async for r in client.bidi(requests_of("a", "b"))] == [
                "anonymous|-:a",
                "anonymous|-:b",
            ]
            assert (await client.client_stream(requests_of("a"))).value == "anonymous|-:a"
    assert state(cb) is BreakerState.CLOSED


async def test_a_hanging_backend_opens_the_circuit_and_calls_never_hang(serve: Serve) -> None:
    echo, port = await serve()
    echo.gate = asyncio.Event()  # every call blocks until released
    cb, _, _ = breaker()
    async with open_channel(port, *circuit_breaker_interceptors(cb)) as channel:
        client = EchoClient(channel)
        for _ in range(3):
            with pytest.raises(grpc.aio.AioRpcError) as slow:
                await client.unary(StringValue(value="x"), timeout=0.2)
            assert slow.value.code() is S.DEADLINE_EXCEEDED
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            # No deadline at all: an open circuit must still answer at once.
            await asyncio.wait_for(client.unary(StringValue(value="x")), timeout=10)
        echo.gate.set()
    assert_circuit_open(caught.value)


async def test_backend_killed_mid_run_opens_the_circuit_then_recovers_through_a_probe() -> None:
    echo = Echo()
    server, port = await start_server(echo)
    cb, clock, changes = breaker()
    try:
        async with open_channel(port, *circuit_breaker_interceptors(cb)) as ch:
            client = EchoClient(ch)
            assert (await client.unary(StringValue(value="up"))).value == "anonymous|-:up"

            await server.stop(None)  # the backend dies mid-run
            codes = []
            for _ in range(5):
                try:
                    await asyncio.wait_for(client.unary(StringValue(value="x"), timeout=5), timeout=10)
                except grpc.aio.AioRpcError as error:
                    codes.append((error.code(), error_reason(error)))
            assert codes[:3] == [(S.UNAVAILABLE, None)] * 3
            assert codes[3:] == [(S.UNAVAILABLE, "CIRCUIT_OPEN")] * 2

            server, _ = await start_server(echo, port=port)  # back on the same port
            clock.now += 5  # the open period passes: the next call is a probe
            reply = await client.unary(StringValue(value="again"), timeout=5, wait_for_ready=True)
            assert reply.value == "anonymous|-:again"
    finally:
        await server.stop(None)
    assert [new for _, _, new in changes] == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


async def test_a_breaker_set_keeps_one_circuit_per_target_on_a_shared_interceptor_list(serve: Serve) -> None:
    echo, port = await serve()
    echo.fail_with = [S.UNAVAILABLE] * 3
    breakers = BreakerSet(POLICY, target_of=lambda method: "echo" if method.startswith("/test.v1.Echo/") else "other")
    async with open_channel(port, *circuit_breaker_interceptors(breakers)) as channel:
        client = EchoClient(channel)
        error = await unary_after_failures(client, 3)
        assert_circuit_open(error)
        # Another target behind the same interceptors is unaffected.
        assert (await client.other(StringValue(value="y"))).value == "anonymous|-:y"
    assert breakers.get("echo").state is BreakerState.OPEN
    assert breakers.get("other").state is BreakerState.CLOSED


def test_a_breaker_set_reports_each_new_breaker_closed_so_dashboards_see_it_before_it_trips() -> None:
    changes: list[Any] = []
    breakers = BreakerSet(
        POLICY, target_of=lambda method: "rag", on_state_change=lambda target, old, new: changes.append((target, new))
    )
    breakers.for_method("/agentmesh.rag.v1.RagService/Search")
    breakers.for_method("/agentmesh.rag.v1.RagService/GetDocument")  # the same target: reported once
    assert changes == [("rag", BreakerState.CLOSED)]
