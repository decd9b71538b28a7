"""A grpc.aio load client: `python -m bench.pyclient --target HOST:PORT --call unary ...`.

Fixed concurrency on one channel, as an application would call: `concurrency` tasks each keep one
call in flight. It warms up, prints `measuring` (the harness starts its CPU window there), measures
for the duration, and prints one JSON line of results. Requests go out as pre-serialized bytes and
responses are compared byte for byte with what a correct server sends, so a wrong answer counts as
an error just like a non-OK status.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bench.payload import CALLS, Call
from interceptors.circuit_breaker import CircuitBreaker, circuit_breaker_interceptors

WRONG_RESPONSE = "WRONG_RESPONSE"


@dataclass(frozen=True)
class ClientOptions:
    target: str
    call: Call
    concurrency: int
    warmup_s: float
    duration_s: float
    metadata: tuple[tuple[str, str], ...] = ()
    # A header given a fresh value on every call (e.g. a new idempotency key per call).
    unique_header: str | None = None
    # Guard the channel with a circuit breaker, as services guard their upstream channels.
    breaker: bool = False
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, round(fraction * len(sorted_values) + 0.5) - 1))
    return float(sorted_values[rank])


class _Window:
    """What the measured window saw: calls that completed inside it."""

    def __init__(self) -> None:
        self.open = False
        self.latencies_ns: list[int] = []
        self.errors: Counter[str] = Counter()
        self.messages = 0


def _channel(options: ClientOptions) -> grpc.aio.Channel:
    channel_options: list[tuple[str, Any]] = []
    interceptors = circuit_breaker_interceptors(CircuitBreaker(options.target)) if options.breaker else None
    if options.ca is None:
        return grpc.aio.insecure_channel(options.target, options=channel_options, interceptors=interceptors)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=options.ca.read_bytes(),
        private_key=options.key.read_bytes() if options.key else None,
        certificate_chain=options.cert.read_bytes() if options.cert else None,
    )
    if options.server_name:
        channel_options.append(("grpc.ssl_target_name_override", options.server_name))
    return grpc.aio.secure_channel(options.target, credentials, options=channel_options, interceptors=interceptors)


async def _worker(
    channel: grpc.aio.Channel, options: ClientOptions, window: _Window, stop: asyncio.Event, ids: Any
) -> None:
    call = options.call
    request = call.request
    expected = call.responses
    static = options.metadata
    header = options.unique_header
    # No serializers: bytes out, bytes back.
    unary = channel.unary_unary(call.method, request_serializer=None, response_deserializer=None)
    stream = channel.unary_stream(call.method, request_serializer=None, response_deserializer=None)
    clock = time.perf_counter_ns
    while not stop.is_set():
        metadata = ((header, f"bench-{next(ids)}"), *static) if header else static
        started = clock()
        outcome: str | None = None
        received = 0
        try:
            if call.kind == "unary":
                response = await unary(request, metadata=metadata, timeout=30)
                received = 1
                if response != expected[0]:
                    outcome = WRONG_RESPONSE
            else:
                matched = True
                async for message in stream(request, metadata=metadata, timeout=30):
                    matched = matched and received < len(expected) and message == expected[received]
                    received += 1
                if not matched or received != len(expected):
                    outcome = WRONG_RESPONSE
        except grpc.aio.AioRpcError as error:
            outcome = error.code().name
        if window.open:
            window.latencies_ns.append(clock() - started)
            window.messages += received
            if outcome is not None:
                window.errors[outcome] += 1


async def run(options: ClientOptions) -> dict[str, Any]:
    window = _Window()
    stop = asyncio.Event()
    ids = itertools.count()
    async with _channel(options) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=10)
        workers = [
            asyncio.create_task(_worker(channel, options, window, stop, ids)) for _ in range(options.concurrency)
        ]
        await asyncio.sleep(options.warmup_s)
        print("measuring", flush=True)
        window.open = True
        opened, cpu_opened = time.perf_counter(), time.process_time()
        await asyncio.sleep(options.duration_s)
        window.open = False
        elapsed, cpu = time.perf_counter() - opened, time.process_time() - cpu_opened
        stop.set()
        await asyncio.gather(*workers)
    latencies = sorted(window.latencies_ns)
    calls = len(latencies)
    return {
        "calls": calls,
        "messages": window.messages,
        "elapsed_s": elapsed,
        "rps": calls / elapsed if elapsed > 0 else 0.0,
        "cpu_s": cpu,
        "errors": dict(window.errors),
        "latency_ms": {name: percentile(latencies, q) / 1e6 for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))},
    }


def parse_args(argv: list[str]) -> ClientOptions:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True)
    parser.add_argument("--call", choices=sorted(CALLS), default="unary")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--header", action="append", default=[], help="NAME=VALUE, sent on every call")
    parser.add_argument("--unique-header", help="a header given a new value on every call")
    parser.add_argument("--breaker", action="store_true", help="a circuit breaker on the channel")
    parser.add_argument("--ca", type=Path)
    parser.add_argument("--cert", type=Path)
    parser.add_argument("--key", type=Path)
    parser.add_argument("--server-name")
    args = parser.parse_args(argv)
    metadata = tuple((name, value) for name, _, value in (h.partition("=") for h in args.header))
    return ClientOptions(
        target=args.target,
        call=CALLS[args.call],
        concurrency=args.concurrency,
        warmup_s=args.warmup,
        duration_s=args.duration,
        metadata=metadata,
        unique_header=args.unique_header,
        breaker=args.breaker,
        ca=args.ca,
        cert=args.cert,
        key=args.key,
        server_name=args.server_name,
    )


def main() -> None:
    result = asyncio.run(run(parse_args(sys.argv[1:])))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
