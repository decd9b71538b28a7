"""An Observe step is told the status the client really gets, for every call kind and every way a call ends."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf.wrappers_pb2 import StringValue

from interceptors._typing import Context
from interceptors.layer import Concern, MethodInfo, Observe
from interceptors.outcome import Outcome
from tests.interceptors.probe import Probe, serve, sv


class Recorder(Concern):
    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []
        self.done = asyncio.Event()
        self.wrapped = 0

    def compile(self, info: MethodInfo) -> Observe:
        self.wrapped += 1

        def done(context: Context, outcome: Outcome, started: float) -> None:
            self.outcomes.append(outcome)
            self.done.set()

        return Observe(done)

    async def last(self) -> Outcome:
        await asyncio.wait_for(self.done.wait(), 10)
        return self.outcomes[-1]


async def _code(call: Any) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_a_returned_response_is_ok_with_the_response(probe: Probe) -> None:
    recorder = Recorder()
    async with serve(probe, [recorder]) as client:
        assert (await client.do(sv("ok:a"))).value == "a#1"
    outcome = await recorder.last()
    assert outcome.code is grpc.StatusCode.OK
    assert outcome.response.value == "a#1"


async def test_set_code_and_trailers_are_seen_as_sent(probe: Probe) -> None:
    recorder = Recorder()
    async with serve(probe, [recorder]) as client:
        assert await _code(client.do(sv("setcode:NOT_FOUND"))) is grpc.StatusCode.NOT_FOUND
    outcome = await recorder.last()
    assert (outcome.code, outcome.details, outcome.response) == (
        grpc.StatusCode.NOT_FOUND,
        "probe set NOT_FOUND",
        None,
    )
    assert ("probe-trailer", "yes") in outcome.trailing_metadata


async def test_abort_is_seen_with_its_rich_status_details(probe: Probe) -> None:
    recorder = Recorder()
    async with serve(probe, [recorder]) as client:
        assert await _code(client.do(sv("abort:FAILED_PRECONDITION"))) is grpc.StatusCode.FAILED_PRECONDITION
    outcome = await recorder.last()
    assert outcome.code is grpc.StatusCode.FAILED_PRECONDITION
    assert any(key == "grpc-status-details-bin" for key, _ in outcome.trailing_metadata)
    assert not outcome.unexpected


async def test_a_crash_is_unknown_and_flagged_unexpected(probe: Probe) -> None:
    recorder = Recorder()
    async with serve(probe, [recorder]) as client:
        assert await _code(client.do(sv("crash"))) is grpc.StatusCode.UNKNOWN
    outcome = await recorder.last()
    assert outcome.code is grpc.StatusCode.UNKNOWN
    assert outcome.unexpected and isinstance(outcome.error, RuntimeError)


async def test_an_expired_deadline_is_deadline_exceeded(probe: Probe) -> None:
    recorder = Recorder()
    async with serve(probe, [recorder]) as client:
        assert await _code(client.do(sv("gate"), timeout=0.2)) is grpc.StatusCode.DEADLINE_EXCEEDED
        assert (await recorder.last()).code is grpc.StatusCode.DEADLINE_EXCEEDED


async def test_a_client_cancellation_is_cancelled(probe: Probe) -> None:
    recorder = Recorder()
    async with serve(probe, [recorder]) as client:
        call = client.do(sv("gate"))
        await asyncio.wait_for(probe.started.wait(), 10)
        call.cancel()
        assert (await recorder.last()).code is grpc.StatusCode.CANCELLED


@pytest.mark.parametrize(
    ("command", "code"),
    [
        ("3", grpc.StatusCode.OK),
        ("2:abort:OUT_OF_RANGE", grpc.StatusCode.OUT_OF_RANGE),
        ("2:crash", grpc.StatusCode.UNKNOWN),
    ],
)
async def test_server_streams_report_how_they_ended(probe: Probe, command: str, code: grpc.StatusCode) -> None:
    recorder = Recorder()
    async with serve(probe, [recorder]) as client:
        call = client.stream(sv(command))
        received = []
        try:
            async for message in call:
                received.append(message.value)
        except grpc.aio.AioRpcError as error:
            assert error.code() is code
        assert received[:2] == ["0", "1"]
    assert (await recorder.last()).code is code


async def test_streams_written_with_context_write_are_observed(probe: Probe) -> None:
    recorder = Recorder()
    async with serve(probe, [recorder]) as client:
        assert [m.value async for m in client.writes(sv("3"))] == ["0", "1", "2"]
    assert (await recorder.last()).code is grpc.StatusCode.OK


async def test_a_cancelled_server_stream_is_cancelled(probe: Probe) -> None:
    recorder = Recorder()
    async with serve(probe, [recorder]) as client:
        call = client.stream(sv("1:gate"))
        first = await call.read()
        assert isinstance(first, StringValue) and first.value == "0"
        await asyncio.wait_for(probe.started.wait(), 10)
        call.cancel()
        assert (await recorder.last()).code is grpc.StatusCode.CANCELLED


async def test_client_streams_and_bidi_streams_are_observed(probe: Probe) -> None:
    recorder = Recorder()

    async def requests(*values: str) -> Any:
        for value in values:
            yield sv(value)

    async with serve(probe, [recorder]) as client:
        assert (await client.collect(requests("1", "2"))).value == "1,2"
        assert (await recorder.last()).response.value == "1,2"
        recorder.done.clear()
        assert await _code(client.collect(requests("1", "abort:ALREADY_EXISTS"))) is grpc.StatusCode.ALREADY_EXISTS
        assert (await recorder.last()).code is grpc.StatusCode.ALREADY_EXISTS
        recorder.done.clear()
        assert [m.value async for m in client.chat(requests("1", "ok:x"))] == ["1", "x#1"]
        assert (await recorder.last()).code is grpc.StatusCode.OK


async def test_each_method_is_wrapped_once_not_per_call(probe: Probe) -> None:
    recorder = Recorder()
    async with serve(probe, [recorder]) as client:
        for _ in range(3):
            await client.do(sv("ok:a"))
    assert recorder.wrapped == 1
