"""One structured line per finished call, with the real code, at a level that fits it."""

from __future__ import annotations

import io
import json
import logging
from datetime import UTC, datetime

import grpc
import grpc.aio
import pytest
from structlog.testing import capture_logs

from interceptors.access_log import AccessLogInterceptor, AccessLogWriter
from interceptors.layer import ServerChain
from interceptors.selector import except_, methods
from interceptors.tracing import TracingInterceptor, setup_tracing
from tests.interceptors.probe import Probe, eventually, serve, sv

LINE_FIELDS = {"method", "code", "duration_ms", "peer", "caller", "event", "level", "logger", "timestamp"}


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


async def test_methods_outside_the_matcher_are_not_logged(probe: Probe) -> None:
    logged = except_(methods("/agentmesh.test.Probe/Stream"))
    async with serve(probe, [AccessLogInterceptor(select=logged)]) as client:
        with capture_logs() as logs:
            assert len([m async for m in client.stream(sv("1"))]) == 1
            await client.do(sv("ok:a"))
    assert [line["method"] for line in logs] == ["/agentmesh.test.Probe/Do"]


async def test_the_json_writer_renders_the_same_fields_as_a_structlog_line(probe: Probe) -> None:
    stream = io.StringIO()
    writer = AccessLogWriter(stream)
    tracing = setup_tracing(service_name="probe")  # nothing records: ids only
    traced = ServerChain([TracingInterceptor(tracing=tracing), AccessLogInterceptor(writer=writer)])
    async with serve(probe, [traced]) as client:
        await client.do(sv("ok:a"))
        with pytest.raises(grpc.aio.AioRpcError):
            await client.do(sv("abort:NOT_FOUND"))
    writer.close()
    ok, failed = (json.loads(line) for line in stream.getvalue().splitlines())
    assert ok.keys() == {*LINE_FIELDS, "trace_id", "span_id"}
    assert (ok["method"], ok["code"], ok["level"], ok["caller"]) == (
        "/agentmesh.test.Probe/Do",
        "OK",
        "info",
        "anonymous",
    )
    assert (ok["event"], ok["logger"]) == ("rpc finished", "agentmesh.access")
    assert ok["peer"].startswith("ipv4:127.0.0.1:") and ok["duration_ms"] >= 0
    assert ok["timestamp"].endswith("Z") and len(ok["trace_id"]) == 32 and len(ok["span_id"]) == 16
    assert (failed["code"], failed["level"]) == ("NOT_FOUND", "info")
    assert failed["trace_id"] != ok["trace_id"]


@pytest.mark.parametrize(
    "now_ns",
    [0, 1_764_574_872_000_000_000, 1_764_574_872_000_999_999, 1_764_574_872_123_456_789, 1_764_574_872_999_999_999],
)
def test_the_writers_timestamp_is_structlogs_iso_utc_stamp_to_the_microsecond(now_ns: int) -> None:
    writer = AccessLogWriter(io.StringIO())
    seconds, micros = divmod(now_ns // 1000, 1_000_000)
    expected = datetime.fromtimestamp(seconds, UTC).replace(microsecond=micros).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert writer.timestamp(now_ns) == expected
    assert writer.timestamp(now_ns) == expected  # the cached second's text, the second time


async def test_sampled_ok_lines_still_write_every_failure(probe: Probe) -> None:
    stream = io.StringIO()
    writer = AccessLogWriter(stream, level=logging.INFO)
    async with serve(probe, [AccessLogInterceptor(writer=writer, ok_every=3)]) as client:
        for index in range(6):
            await client.do(sv(f"ok:{index}"))
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError):
                await client.do(sv("crash"))
    writer.close()
    codes = [json.loads(line)["code"] for line in stream.getvalue().splitlines()]
    assert sorted(codes) == ["OK", "OK", "UNKNOWN", "UNKNOWN"]


async def test_the_writer_leaves_out_lines_below_its_level(probe: Probe) -> None:
    stream = io.StringIO()
    writer = AccessLogWriter(stream, level=logging.WARNING)
    async with serve(probe, [AccessLogInterceptor(writer=writer)]) as client:
        await client.do(sv("ok:a"))
        with pytest.raises(grpc.aio.AioRpcError):
            await client.do(sv("abort:UNAVAILABLE"))
    writer.close()
    [line] = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert (line["code"], line["level"]) == ("UNAVAILABLE", "warning")
