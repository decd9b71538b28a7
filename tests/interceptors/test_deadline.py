"""Calls without a deadline get the default; outgoing calls inherit the rest less a margin;
late work is refused."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import grpc.aio
import pytest

from interceptors.deadline import (
    DeadlineInterceptor,
    call_deadline,
    deadline_client_interceptors,
    remaining_budget,
)
from interceptors.selector import except_, methods
from tests.interceptors.probe import Probe, ProbeClient, serve, sv


async def test_a_call_without_deadline_is_stopped_at_the_default(probe: Probe) -> None:
    async with serve(probe, [DeadlineInterceptor(default_timeout=0.2)]) as client:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.do(sv("gate"))
    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert "server default of 0.2s" in (caught.value.details() or "")


async def test_a_stream_without_deadline_is_stopped_at_the_default(probe: Probe) -> None:
    async with serve(probe, [DeadlineInterceptor(default_timeout=0.2)]) as client:
        received = []
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for message in client.stream(sv("2:gate")):
                received.append(message.value)
    assert received == ["0", "1"]
    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED


async def test_the_handler_sees_the_effective_deadline(probe: Probe) -> None:
    budgets: list[float | None] = []

    async def record(command: str, context: Any) -> None:
        budgets.append(remaining_budget())

    probe.hook = record
    async with serve(probe, [DeadlineInterceptor(default_timeout=7)]) as client:
        await client.do(sv("ok:a"))
        await client.do(sv("ok:b"), timeout=3)
    assert budgets[0] is not None and 6 < budgets[0] <= 7
    assert budgets[1] is not None and 2 < budgets[1] <= 3.1  # grpc rounds the wire timeout up
    assert call_deadline.get() is None  # nothing leaks out of the call


async def test_work_whose_deadline_passed_before_it_started_is_refused(probe: Probe) -> None:
    stall = _Stall(0.4)
    async with serve(probe, [stall, DeadlineInterceptor()]) as client:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.do(sv("ok:late"), timeout=0.2)
        assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        # The server side, stalled past the deadline, has gone through the chain by now.
        await asyncio.wait_for(stall.passed.wait(), 10)
    assert probe.runs["ok:late"] == 0


async def test_outgoing_calls_get_the_remaining_budget_less_the_margin(probe: Probe) -> None:
    downstream = Probe()
    seen: list[float | None] = []

    async def record(command: str, context: Any) -> None:
        seen.append(context.time_remaining())

    downstream.hook = record
    async with serve(downstream) as down:
        target = down.target

        async def forward(command: str, context: Any) -> None:
            async with grpc.aio.insecure_channel(
                target, interceptors=deadline_client_interceptors(margin=0.5)
            ) as channel:
                await ProbeClient(channel).do(sv("ok:down"), timeout=60)

        probe.hook = forward
        async with serve(probe, [DeadlineInterceptor()]) as client:
            await client.do(sv("ok:up"), timeout=10)
    [remaining] = seen
    # 10 s budget, less the margin, less the time spent getting there (a new channel's connect,
    # which a loaded machine can stretch to seconds); never the client's 60 s.
    assert remaining is not None and 5 < remaining <= 9.6  # grpc rounds the wire timeout up


async def test_an_outgoing_call_with_no_budget_left_fails_locally(probe: Probe) -> None:
    downstream = Probe()
    async with serve(downstream) as down:
        errors: list[grpc.aio.AioRpcError] = []

        async def forward(command: str, context: Any) -> None:
            async with grpc.aio.insecure_channel(
                down.target, interceptors=deadline_client_interceptors(margin=5)
            ) as channel:
                try:
                    await ProbeClient(channel).do(sv("ok:down"))
                except grpc.aio.AioRpcError as error:
                    errors.append(error)

        probe.hook = forward
        async with serve(probe, [DeadlineInterceptor()]) as client:
            await client.do(sv("ok:up"), timeout=2)
    [error] = errors
    assert error.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert downstream.runs["ok:down"] == 0


class _Stall(grpc.aio.ServerInterceptor):
    """Blocks the loop before the chain runs, as an overloaded server would."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self.passed = asyncio.Event()  # a stalled call went on through the rest of the chain

    async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        handler = await continuation(handler_call_details)
        inner = handler.unary_unary
        seconds = self._seconds

        async def stalled(request: Any, context: Any) -> Any:
            time.sleep(seconds)  # noqa: ASYNC251 - an overloaded loop, on purpose
            try:
                return await inner(request, context)
            finally:
                self.passed.set()

        return grpc.unary_unary_rpc_method_handler(
            stalled,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


async def test_long_lived_methods_can_be_exempt_from_the_default(probe: Probe) -> None:
    exempt = DeadlineInterceptor(default_timeout=0.1, select=except_(methods("/agentmesh.test.Probe/Do")))
    async with serve(probe, [exempt]) as client:
        assert (await client.do(sv("sleep:0.3"))).value == "slept"


async def test_calls_on_the_default_deadline_expire_each_at_its_own_time(probe: Probe) -> None:
    async with serve(probe, [DeadlineInterceptor(default_timeout=0.5)]) as client:
        stuck = asyncio.ensure_future(client.do(sv("gate")))
        await asyncio.wait_for(probe.started.wait(), 10)
        # Calls that start and finish meanwhile leave the stuck one's deadline alone.
        assert [(await client.do(sv(f"ok:{i}"))).value for i in range(3)] == ["0#1", "1#1", "2#1"]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stuck
        assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert (await client.do(sv("ok:after"))).value == "after#1"  # the next call gets a fresh deadline
