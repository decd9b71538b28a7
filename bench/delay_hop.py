"""A TCP hop that holds every chunk for a set delay each way: a database "a zone away" on loopback.

`python -m bench.delay_hop --target HOST:PORT --delay-ms D [--port P] [--port-file F]` listens on
127.0.0.1 and forwards each connection to the target. Every chunk read from one side is written to
the other ``D`` ms after it was read, in order. A chunk waits in a per-direction queue with its
release time while the next ones are read, so the delay adds latency without cutting the stream's
throughput (sleeping before each write would let a pipelined burst of N chunks take N x D).

The bench (bench/write_path.py) runs it as a process of its own, so that its work is not queued
behind the load generator's event loop, and puts it between the agents and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections import deque
from pathlib import Path

from bench.cli import OneLineParser, non_negative_float

_CHUNK = 64 * 1024


async def _relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float) -> None:
    """Copy ``reader`` to ``writer``, each chunk ``delay_s`` after it arrived; half-close at EOF."""
    loop = asyncio.get_running_loop()
    # (release time, chunk) in arrival order; an empty chunk is the end of the stream.
    pending: deque[tuple[float, bytes]] = deque()
    arrived = asyncio.Event()

    async def release() -> None:
        while True:
            if not pending:
                arrived.clear()
                await arrived.wait()
                continue
            wait = pending[0][0] - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            # Everything already due goes out in one write.
            now = loop.time()
            out: list[bytes] = []
            ended = False
            while pending and pending[0][0] <= now:
                chunk = pending.popleft()[1]
                if not chunk:
                    ended = True
                    break
                out.append(chunk)
            if out:
                writer.write(b"".join(out))
                await writer.drain()
            if ended:
                if writer.can_write_eof():
                    writer.write_eof()
                return

    releaser = asyncio.create_task(release())
    try:
        while True:
            chunk = await reader.read(_CHUNK)
            pending.append((loop.time() + delay_s, chunk))
            arrived.set()
            if not chunk:
                break
        await releaser
    finally:
        releaser.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await releaser


class DelayHop:
    """Listens on 127.0.0.1:``port`` (0: a free one) and relays to ``target`` with ``delay_s`` each way."""

    def __init__(self, target_host: str, target_port: int, delay_s: float, port: int = 0) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.delay_s = delay_s
        self.port = port
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[object]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and end every connection still open."""
        if self._server is not None:
            self._server.close()
        connections = list(self._connections)
        for task in connections:
            task.cancel()
        await asyncio.gather(*connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> DelayHop:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    async def _connection(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            client_writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            # Either side resetting ends both directions: the other side sees its connection close.
            await asyncio.gather(
                _relay(client_reader, upstream_writer, self.delay_s),
                _relay(upstream_reader, client_writer, self.delay_s),
            )
        except (ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            # stop() ends the connection; asyncio's stream server logs a handler that ends cancelled.
            pass
        finally:
            self._connections.discard(task)
            client_writer.close()
            upstream_writer.close()


def _target(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(text)
    return host, int(port)


async def _serve(hop: DelayHop, port_file: Path | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with hop:
        if port_file is not None:
            await asyncio.to_thread(port_file.write_text, str(hop.port))
        print(
            f"delay hop 127.0.0.1:{hop.port} -> {hop.target_host}:{hop.target_port},"
            f" {hop.delay_s * 1000:g} ms each way",
            flush=True,
        )
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m bench.delay_hop", description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="HOST:PORT to forward to (e.g. PostgreSQL)")
    parser.add_argument("--delay-ms", type=non_negative_float, default=1.0, help="added each way (default 1)")
    parser.add_argument("--port", type=int, default=0, help="loopback port to listen on (default: a free one)")
    parser.add_argument("--port-file", type=Path, help="written with the port once listening")
    args = parser.parse_args(argv)
    try:
        host, port = _target(args.target)
    except ValueError:
        parser.error(f"--target {args.target!r}: expected HOST:PORT, e.g. 127.0.0.1:5432")
    asyncio.run(_serve(DelayHop(host, port, args.delay_ms / 1000, args.port), args.port_file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
