"""The grpc.aio floor under the gateway: `python -m bench.floor_proxy --upstream ADDR --port-file PATH`.

The least a Python forwarder can do per unary call with grpc.aio: one generic handler (one dict
lookup; cheaper in grpc.aio than a registered method, whose pending request every call waits on)
that takes the request as bytes, calls the backend on one cached multicallable with the caller's
remaining deadline, and returns the response bytes. No chain, no metadata copied, no trace
context, no retries, no breaker. What the gateway spends per call above this is the price of what
it does (its server chain, the policies in its proxy); this is the part no Python code can remove.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

import grpc

from bench import payload
from bench.backend import write_port


async def serve(upstream: str, port_file: Path) -> None:
    channel = grpc.aio.insecure_channel(upstream)
    # Registered, as generated stubs do: grpc core resolves the method path once, not per call.
    forward = channel.unary_unary(f"/{payload.SERVICE}/CreateRun", _registered_method=True)  # type: ignore[call-arg]

    async def create_run(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        response: bytes = await forward(request, timeout=context.time_remaining())
        return response

    server = grpc.aio.server()
    handlers = {"CreateRun": grpc.unary_unary_rpc_method_handler(create_run)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(payload.SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    write_port(port_file, port)
    await stop.wait()
    await server.stop(1)
    await channel.close(None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--upstream", required=True, help="host:port of the backend")
    parser.add_argument("--port-file", required=True, type=Path)
    args = parser.parse_args()
    asyncio.run(serve(args.upstream, args.port_file))


if __name__ == "__main__":
    main()
