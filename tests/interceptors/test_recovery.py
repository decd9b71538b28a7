"""Unexpected exceptions become INTERNAL without leaking; statuses chosen by handlers pass untouched."""

from __future__ import annotations

import grpc
import grpc.aio
import pytest
from structlog.testing import capture_logs

from interceptors.recovery import RecoveryInterceptor
from tests.interceptors.probe import Probe, serve, sv


async def test_a_crash_becomes_internal_without_the_exception_text(probe: Probe) -> None:
    async with serve(probe, [RecoveryInterceptor()]) as client:
        with capture_logs() as logs, pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.do(sv("crash"))
    assert caught.value.code() is grpc.StatusCode.INTERNAL
    assert "secret" not in (caught.value.details() or "")
    assert "RuntimeError" not in (caught.value.details() or "")
    [entry] = [log for log in logs if log["event"] == "unhandled exception"]
    assert entry["log_level"] == "error" and entry["method"] == "/agentmesh.test.Probe/Do"
    assert isinstance(entry["exc_info"], RuntimeError)


async def test_a_crash_mid_stream_becomes_internal_after_the_messages_sent(probe: Probe) -> None:
    async with serve(probe, [RecoveryInterceptor()]) as client:
        received = []
        with capture_logs(), pytest.raises(grpc.aio.AioRpcError) as caught:
            async for message in client.stream(sv("2:crash")):
                received.append(message.value)
    assert received == ["0", "1"]
    assert caught.value.code() is grpc.StatusCode.INTERNAL
    assert "secret" not in (caught.value.details() or "")


async def test_statuses_set_by_the_handler_pass_untouched(probe: Probe) -> None:
    async with serve(probe, [RecoveryInterceptor()]) as client:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.do(sv("abort:NOT_FOUND"))
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND
        assert caught.value.details() == "probe aborted with NOT_FOUND"
        assert (await client.do(sv("ok:fine"))).value == "fine#1"
