"""Round trips to PostgreSQL, counted on the wire: a loopback relay between a client and the server.

One round trip is the client speaking after the server has answered (or for the first time on
a connection): however the bytes are split into segments, a request the client sends in several
writes before any answer counts once, and so does an answer in several segments. BEGIN, COMMIT,
a pool's ping and a statement's PREPARE are all round trips like any other, counted as such.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class RoundTripCounter:
    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self.round_trips = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(*self._target)
        # Who spoke last on this connection: a client write after the server's answer is a new round trip.
        last = {"speaker": "server"}

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, speaker: str) -> None:
            try:
                while data := await reader.read(65536):
                    if speaker == "client" and last["speaker"] == "server":
                        self.round_trips += 1
                    last["speaker"] = speaker
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                writer.close()

        tasks = [
            asyncio.create_task(pipe(client_reader, server_writer, "client")),
            asyncio.create_task(pipe(server_reader, client_writer, "server")),
        ]
        self._pipes.update(tasks)
        await asyncio.gather(*tasks, return_exceptions=True)
        self._pipes.difference_update(tasks)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[RoundTripCounter]:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        try:
            yield self
        finally:
            self._server.close()
            for task in list(self._pipes):
                task.cancel()
            await asyncio.gather(*self._pipes, return_exceptions=True)
