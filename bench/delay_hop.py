"""A TCP hop that holds every chunk for a set delay each way: a database "a zone away" on loopback.

`python -m bench.delay_hop --target HOST:PORT --delay-ms D [--port P] [--port-file F]` listens on
127.0.0.1 and forwards each connection to the target. Every chunk read from one side is written to
the other ``D`` ms after it was read, in order, and so are a half-close and a close. A chunk waits
in a per-direction queue with its release time while the next ones are read, so the delay adds
latency without cutting the stream's throughput (sleeping before each write would let a pipelined
burst of N chunks take N x D).

The bench (bench/write_path.py) runs it as a process of its own, so that its work is not queued
behind the load generator's event loop, and puts it between the agents and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections import deque
from pathlib import Path
from typing import Final

from bench.cli import OneLineParser, non_negative_float

# Markers in a direction's queue, after the data read before them.
_EOF: Final = b""
_CLOSED: Final = None


class _Side(asyncio.Protocol):
    """One end of a relayed connection. What its socket receives goes to ``peer``'s socket
    ``delay_s`` later, from a queue of (release time, chunk) drained by one ``call_at`` timer:
    no task and no sleep per chunk, so the hop costs little CPU and keeps the stream's pace."""

    def __init__(self, hop: DelayHop) -> None:
        self.hop = hop
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.pending: deque[tuple[float, bytes | None]] = deque()
        self.timer: asyncio.TimerHandle | None = None
        self.got_eof = False  # this socket will send nothing more
        self.sent_eof = False  # nothing more will be written to this socket

    # --- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.hop.sides.add(self)

    def data_received(self, data: bytes) -> None:
        self._enqueue(data)

    def eof_received(self) -> bool:
        self.got_eof = True
        self._enqueue(_EOF)
        self._close_if_done()
        return True  # half-closed: the other direction may still be flowing

    def connection_lost(self, exc: Exception | None) -> None:
        self.hop.sides.discard(self)
        self._enqueue(_CLOSED)

    # Flow control: when this socket cannot take more, stop reading what feeds it.
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None and not self.peer.transport.is_closing():
            self.peer.transport.resume_reading()

    # --- relaying ------------------------------------------------------------------------
    def _enqueue(self, chunk: bytes | None) -> None:
        self.pending.append((self.loop.time() + self.hop.delay_s, chunk))
        if self.peer is not None and self.timer is None:
            self._release()

    def _release(self) -> None:
        """Write every chunk now due to the peer; wake again when the next one is."""
        self.timer = None
        peer = self.peer
        assert peer is not None and peer.transport is not None
        now = self.loop.time()
        out: list[bytes] = []
        while self.pending and self.pending[0][0] <= now:
            chunk = self.pending.popleft()[1]
            if chunk:
                out.append(chunk)
                continue
            if out and not peer.transport.is_closing():
                peer.transport.write(b"".join(out))
            out = []
            if chunk is _CLOSED:
                peer.transport.close()
                self.pending.clear()
                return
            peer.sent_eof = True
            if peer.transport.can_write_eof() and not peer.transport.is_closing():
                try:
                    peer.transport.write_eof()
                except OSError:
                    # The peer's socket was reset before asyncio noticed: nothing more can reach it.
                    peer.transport.abort()
            peer._close_if_done()
        if out and not peer.transport.is_closing():
            peer.transport.write(b"".join(out))
        if self.pending:
            self.timer = self.loop.call_at(self.pending[0][0], self._release)

    def _close_if_done(self) -> None:
        if self.got_eof and self.sent_eof and self.transport is not None:
            self.transport.close()

    def link(self, peer: _Side) -> None:
        self.peer = peer
        if self.pending and self.timer is None:
            self.timer = self.loop.call_at(self.pending[0][0], self._release)

    def abort(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.transport is not None:
            self.transport.abort()


class DelayHop:
    """Listens on 127.0.0.1:``port`` (0: a free one) and relays to ``target`` with ``delay_s`` each way."""

    def __init__(self, target_host: str, target_port: int, delay_s: float, port: int = 0) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.delay_s = delay_s
        self.port = port
        self.sides: set[_Side] = set()
        self._server: asyncio.Server | None = None
        self._connecting: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._accepted, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and drop every connection still open."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connecting):
            task.cancel()
        await asyncio.gather(*self._connecting, return_exceptions=True)
        for side in list(self.sides):
            side.abort()
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> DelayHop:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    def _accepted(self) -> _Side:
        client = _Side(self)
        # The client's bytes wait in its queue until the target is connected.
        task = asyncio.get_running_loop().create_task(self._connect(client))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)
        return client

    async def _connect(self, client: _Side) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await loop.create_connection(lambda: _Side(self), self.target_host, self.target_port)
        except OSError:
            if client.transport is not None:
                client.transport.close()
            return
        client.link(upstream)
        upstream.link(client)


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
