"""One lifespan per service: closes run last-opened first, a half-done build closes what it opened,
and background loops are supervised (a crash restarts the loop or stops the service cleanly)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from runtime.backoff import Backoff
from runtime.bootstrap import ManagedServer, ServerPlan, serve_until_signal
from runtime.config import ServiceSettings
from runtime.lifespan import Lifespan
from services.rag.config import RagSettings
from services.rag.server import build as build_rag
from tests.ports import free_port, port_is_free


class Resource:
    def __init__(self, name: str, closed: list[str], *, fail_on_close: bool = False) -> None:
        self.name, self._closed, self._fail = name, closed, fail_on_close

    async def close(self) -> None:
        self._closed.append(self.name)
        if self._fail:
            raise RuntimeError(f"{self.name} failed to close")


def quick_settings() -> ServiceSettings:
    return ServiceSettings(port=0, host="127.0.0.1", drain_delay_s=0, grace_period_s=1)


async def test_a_build_that_fails_after_opening_three_resources_closes_exactly_those_last_first() -> None:
    closed: list[str] = []

    async def build() -> ServerPlan:
        async with Lifespan.opening() as life:
            for name in ("db", "bus", "upstreams"):
                life.closing(Resource(name, closed))
            if closed == []:
                raise RuntimeError("the decision engine failed to load")
            life.closing(Resource("never opened", closed))
            return ServerPlan(settings=quick_settings(), bindings=[], lifespan=life)

    with pytest.raises(RuntimeError, match="decision engine"):
        await build()
    assert closed == ["upstreams", "bus", "db"]


async def test_a_failing_close_is_logged_and_the_others_still_close() -> None:
    closed: list[str] = []
    async with Lifespan.opening() as life:
        life.closing(Resource("db", closed))
        life.closing(Resource("bus", closed, fail_on_close=True))
        life.closing(Resource("upstreams", closed))
    await life.aclose()
    await life.aclose()  # idempotent: nothing closes twice
    assert closed == ["upstreams", "bus", "db"]


async def test_a_failing_start_hook_closes_what_build_and_the_earlier_hooks_opened() -> None:
    closed: list[str] = []
    life = Lifespan()
    life.closing(Resource("db", closed))

    async def opens_more(port: int) -> None:
        life.closing(Resource("registration", closed))

    async def fails(port: int) -> None:
        raise RuntimeError("start-up hook failed")

    life.on_started(opens_more)
    life.on_started(fails)
    server = ManagedServer(ServerPlan(settings=quick_settings(), bindings=[], lifespan=life))
    with pytest.raises(RuntimeError, match="start-up hook failed"):
        await server.start()
    assert closed == ["registration", "db"]


async def test_a_crashed_loop_is_restarted_with_backoff_and_keeps_running() -> None:
    life = Lifespan()
    runs = 0
    third_run = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs < 3:
            raise ConnectionError("the broker went away")
        third_run.set()
        await asyncio.Event().wait()  # healthy from now on

    loop = life.supervise("relay", flaky, backoff=Backoff(initial=0.01, maximum=0.02))
    await asyncio.wait_for(third_run.wait(), 10)
    assert loop.crashes == 2 and loop.running
    await life.aclose()
    assert not loop.running


async def test_a_loop_that_must_not_fail_alone_stops_the_service_and_every_resource_still_closes() -> None:
    closed: list[str] = []
    life = Lifespan()
    life.closing(Resource("db", closed))
    life.closing(Resource("bus", closed))

    async def follower() -> None:
        raise RuntimeError("the follower lost its place")

    async def start_loops(port: int) -> None:
        life.supervise("follower", follower, on_crash="stop")
        life.closing(Resource("opened after the loop", closed))

    life.on_started(start_loops)

    async def build() -> ServerPlan:
        return ServerPlan(settings=quick_settings(), bindings=[], lifespan=life)

    exit_code = await asyncio.wait_for(serve_until_signal(build), 15)
    assert exit_code == 1
    assert life.failure is not None and "follower" in life.failure
    assert closed == ["opened after the loop", "bus", "db"]


async def test_a_rag_build_that_fails_half_way_releases_its_metrics_port(tmp_path: Path) -> None:
    metrics_port = free_port()
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("the data dir must be a directory")
    settings = RagSettings(port=0, data_dir=not_a_directory, metrics_port=metrics_port, dense_enabled=False)

    with pytest.raises(OSError):
        await build_rag(settings)  # the metrics endpoint was open when the store failed to open

    assert port_is_free(metrics_port)
