"""One structured line per finished call, with the real code, at a level that fits it."""

from __future__ import annotations

import grpc
import grpc.aio
import pytest
from structlog.testing import capture_logs

from interceptors.access_log import AccessLogInterceptor
from tests.interceptors.probe import Probe, eventually, serve, sv


async def test_each_call_logs_one_line_with_method_code_duration_peer_and_caller(probe: Probe) -> None:
    async with serve(probe, [AccessLogInterceptor()]) as client:
        with capture_logs() as logs:
            await client.do(sv("ok:a"))
    [line] = logs
    assert line["event"] == "rpc finished"
    assert line["method"] == "/agentmesh.test.Probe/Do"
    assert line["code"] == "OK" and line["log_level"] == "info"
    assert line["duration_ms"] >= 0
    assert line["peer"].startswith("ipv4:127.0.0.1:")
    assert line["caller"] == "anonymous"


@pytest.mark.parametrize(
    ("command", "code", "level"),
    [
        ("abort:NOT_FOUND", "NOT_FOUND", "info"),
        ("abort:UNAVAILABLE", "UNAVAILABLE", "warning"),
        ("crash", "UNKNOWN", "error"),
    ],
)
async def test_the_level_follows_the_code(probe: Probe, command: str, code: str, level: str) -> None:
    async with serve(probe, [AccessLogInterceptor()]) as client:
        with capture_logs() as logs:
            with pytest.raises(grpc.aio.AioRpcError):
                await client.do(sv(command))
            await eventually(lambda: len(logs) == 1)
    [line] = [log for log in logs if log["event"] == "rpc finished"]
    assert (line["code"], line["log_level"]) == (code, level)


async def test_streams_are_logged_once_when_they_end(probe: Probe) -> None:
    async with serve(probe, [AccessLogInterceptor()]) as client:
        with capture_logs() as logs:
            assert len([m async for m in client.stream(sv("5"))]) == 5
    [line] = logs
    assert (line["method"], line["code"]) == ("/agentmesh.test.Probe/Stream", "OK")


async def test_probe_methods_are_not_logged(probe: Probe) -> None:
    async with serve(probe, [AccessLogInterceptor(skip=("/agentmesh.test.Probe/Stream",))]) as client:
        with capture_logs() as logs:
            assert len([m async for m in client.stream(sv("1"))]) == 1
            await client.do(sv("ok:a"))
    assert [line["method"] for line in logs] == ["/agentmesh.test.Probe/Do"]
