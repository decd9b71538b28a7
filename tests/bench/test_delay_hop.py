"""bench.delay_hop: every byte arrives, in order, and no sooner than the set delay each way."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from bench.delay_hop import DelayHop
from tests.bench.modules import run_bench


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Sends back everything it reads; after the caller's EOF, a last b"bye" and its own EOF."""
    # A caller that hangs up without a half-close may be gone before the goodbye.
    with contextlib.suppress(ConnectionError, OSError):
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
        writer.write(b"bye")
        writer.write_eof()
        await writer.drain()
    writer.close()


@asynccontextmanager
async def _hop(delay_s: float) -> AsyncIterator[DelayHop]:
    """A hop in front of an echo server; on exit, every echo connection has ended too."""
    handlers: set[asyncio.Task[None]] = set()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        await _echo(reader, writer)

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        async with DelayHop("127.0.0.1", server.sockets[0].getsockname()[1], delay_s) as hop:
            yield hop
    finally:
        server.close()
        await server.wait_closed()
        # The hop dropped its side of each: every handler sees it and ends.
        await asyncio.wait_for(asyncio.gather(*handlers), timeout=30)


async def test_bytes_come_back_whole_and_in_order_with_half_close_passed_through() -> None:
    sent = [os.urandom(n) for n in (1, 7, 1500, 65536, 300_000, 3)]
    async with _hop(0.002) as hop:
        reader, writer = await asyncio.open_connection("127.0.0.1", hop.port)
        for chunk in sent:
            writer.write(chunk)
        await writer.drain()
        writer.write_eof()
        received = await asyncio.wait_for(reader.read(), timeout=30)  # to the echo server's EOF
        writer.close()
    assert received == b"".join(sent) + b"bye"


async def test_a_round_trip_takes_at_least_the_delay_each_way() -> None:
    delay_s = 0.05
    async with _hop(delay_s) as hop:
        reader, writer = await asyncio.open_connection("127.0.0.1", hop.port)
        round_trips = []
        for n in range(3):
            began = time.monotonic()
            writer.write(b"ping %d" % n)
            echoed = await asyncio.wait_for(reader.readexactly(6), timeout=30)
            round_trips.append(time.monotonic() - began)
            assert echoed == b"ping %d" % n
        writer.close()
    assert min(round_trips) >= 2 * delay_s


async def test_connections_do_not_mix_and_a_closed_target_closes_the_caller() -> None:
    async with _hop(0.001) as hop:
        pairs = [await asyncio.open_connection("127.0.0.1", hop.port) for _ in range(5)]
        for n, (_, writer) in enumerate(pairs):
            writer.write(b"%02d" % n * 100)
        echoed = [await asyncio.wait_for(reader.readexactly(200), timeout=30) for reader, _ in pairs]
        for _, writer in pairs:
            writer.close()
    assert echoed == [b"%02d" % n * 100 for n in range(5)]

    hop = DelayHop("127.0.0.1", 1, 0.001)  # nothing listens on port 1
    async with hop:
        reader, writer = await asyncio.open_connection("127.0.0.1", hop.port)
        assert await asyncio.wait_for(reader.read(), timeout=30) == b""
        writer.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--target", "localhost"), "--target 'localhost': expected HOST:PORT"),
        (("--target", "127.0.0.1:5432", "--delay-ms", "-1"), "--delay-ms: -1 is not a number of at least 0"),
        ((), "the following arguments are required: --target"),
    ],
)
def test_a_bad_argument_is_refused_in_one_line(args: tuple[str, ...], message: str) -> None:
    done = run_bench("bench.delay_hop", *args, timeout=30)

    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert message in done.stderr
