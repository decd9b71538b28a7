"""SIGTERM drains a server: in-flight calls finish, health says NOT_SERVING, new calls are refused, exit 0."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from tests.system import ServiceProcess, health_status, spawn, wait_until


def slow_service(tmp_path: Path, **settings: str) -> ServiceProcess:
    """``tests.runtime.slow_service`` started with ``AGENTMESH_SLOW_<NAME>`` set from ``settings``."""
    env = {"AGENTMESH_SLOW_PORT_FILE": str(tmp_path / "port")}
    env.update({f"AGENTMESH_SLOW_{name}": value for name, value in settings.items()})
    return spawn("tests.runtime.slow_service", env, tmp_path)


async def test_sigterm_lets_in_flight_calls_finish_and_refuses_new_ones(tmp_path: Path) -> None:
    # New calls are refused while the drain delay lasts; it must outlast the health polling and
    # the fresh call below even on a busy machine.
    service = slow_service(tmp_path, DRAIN_DELAY_S="4", GRACE_PERIOD_S="10")
    try:
        async with grpc.aio.insecure_channel(service.address) as channel:
            in_flight = channel.unary_unary("/test.Slow/Wait")(b"2.5", timeout=15)
            stream = channel.unary_stream("/test.Slow/Ticks")(b"12", timeout=15)
            # Both calls are inside their handlers once their first bytes come back.
            await in_flight.initial_metadata()
            first = await stream.read()
            assert first == b"0"

            service.process.send_signal(15)

            async def not_serving() -> bool:
                return await health_status(service.address) == "NOT_SERVING"

            await wait_until(not_serving, timeout_s=5)
            async with grpc.aio.insecure_channel(service.address) as fresh:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await fresh.unary_unary("/test.Slow/Wait")(b"0", timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "shutting down" in (refused.value.details() or "")

            assert await asyncio.wait_for(in_flight, 15) == b"done"
            rest = []
            while (message := await stream.read()) is not grpc.aio.EOF:
                rest.append(message)
            assert [first, *rest] == [str(i).encode() for i in range(12)]
            assert await stream.code() == grpc.StatusCode.OK
        assert await asyncio.to_thread(service.process.wait, 15) == 0
    finally:
        service.kill()
    assert "draining" in service.logs() and "stopped" in service.logs()


async def test_calls_still_running_after_the_grace_period_are_cancelled_and_the_process_exits(
    tmp_path: Path,
) -> None:
    service = slow_service(tmp_path, DRAIN_DELAY_S="0", GRACE_PERIOD_S="0.5")
    try:
        async with grpc.aio.insecure_channel(service.address) as channel:
            stream = channel.unary_stream("/test.Slow/Ticks")(b"1000", timeout=30)
            assert await stream.read() == b"0"
            service.process.send_signal(15)
            with pytest.raises(grpc.aio.AioRpcError):
                while await stream.read() is not grpc.aio.EOF:
                    pass
        assert await asyncio.to_thread(service.process.wait, 15) == 0
    finally:
        service.kill()


async def test_a_sigterm_that_lands_as_the_start_finishes_still_drains_the_server(tmp_path: Path) -> None:
    # Too late to cancel the start, so it must begin the drain instead of being dropped (a forked
    # worker signalled by its parent at that moment once served on for its whole grace period).
    try:
        service = slow_service(tmp_path, SIGNAL_ON_START="1")
    except RuntimeError as exited_already:  # it may be gone before the launcher saw the port
        assert "exited with 0" in str(exited_already)
        return
    try:
        assert await asyncio.to_thread(service.process.wait, 20) == 0
    finally:
        service.kill()
    assert "draining" in service.logs()


async def test_a_failure_during_start_up_stops_the_server_and_the_process_exits_non_zero(tmp_path: Path) -> None:
    try:
        service = slow_service(tmp_path, FAIL_ON_START="1")
    except RuntimeError as exited_already:  # it may fail before the launcher saw the port
        assert "start-up failed" in str(exited_already)
        return
    try:
        assert await asyncio.to_thread(service.process.wait, 20) != 0
    finally:
        service.kill()
    assert "start-up failed" in service.logs()
