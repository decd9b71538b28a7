"""Server CPU per call with and without each interceptor, on a real server in its own process.

Throughput on a shared machine swings with whatever else runs; the CPU time the server
process spends per call does much less, so that is what is compared. Each configuration
serves the test probe in a subprocess; this process drives it with concurrent unary calls
over loopback and reads the server's CPU time before and after. The best of several
rounds is kept.

    python -m bench.chain_overhead [--calls 4000] [--rounds 3] [--logs] [config ...]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import grpc
import grpc.aio
import psutil

from tests.interceptors.probe import ProbeClient, sv

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ("bare", "tracing", "otel-instrumentation", "metrics", "access_log", "errors", "deadline", "chain")

_SERVER = """
import asyncio, logging, sys
import grpc, structlog
from prometheus_client import CollectorRegistry
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from interceptors.access_log import AccessLogInterceptor
from interceptors.chain import server_chain
from interceptors.deadline import DeadlineInterceptor
from interceptors.errors import ErrorsInterceptor
from interceptors.metrics import Metrics, MetricsInterceptor
from interceptors.tracing import TracingInterceptor, setup_tracing
from runtime.logging import configure_logging
from tests.interceptors.probe import Probe

name, logs = sys.argv[1], sys.argv[2] == "1"
if logs:
    configure_logging(level="INFO", fmt="json")
else:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
tracing = setup_tracing(service_name="bench")
chains = {
    "bare": lambda: [],
    "tracing": lambda: [TracingInterceptor(tracing=tracing)],
    "otel-instrumentation": lambda: [aio_server_interceptor(tracer_provider=tracing.provider)],
    "metrics": lambda: [MetricsInterceptor(metrics=Metrics(registry=CollectorRegistry()))],
    "access_log": lambda: [AccessLogInterceptor()],
    "errors": lambda: [ErrorsInterceptor()],
    "deadline": lambda: [DeadlineInterceptor()],
    "chain": lambda: server_chain(
        tracing=tracing,
        metrics=Metrics(registry=CollectorRegistry()),
        access_log=AccessLogInterceptor(),
        default_deadline_s=30,
    ),
}


async def main() -> None:
    server = grpc.aio.server(interceptors=chains[name]())
    server.add_generic_rpc_handlers((Probe().handlers(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


asyncio.run(main())
"""


async def cpu_per_call(config: str, *, calls: int, concurrency: int, logs: bool) -> float:
    """Microseconds of server CPU per call for one configuration."""
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _SERVER,
        config,
        "1" if logs else "0",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={"PYTHONPATH": f"{REPO}:{REPO / 'gen'}"},
    )
    try:
        assert server.stdout is not None
        port = int(await server.stdout.readline())
        process = psutil.Process(server.pid)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            client = ProbeClient(channel)
            for _ in range(200):  # warm up: connections, caches, first-call wrapping
                await client.do(sv("ok:warm"))
            before = process.cpu_times()

            async def worker() -> None:
                for _ in range(calls // concurrency):
                    await client.do(sv("ok:a"))

            await asyncio.gather(*(worker() for _ in range(concurrency)))
            after = process.cpu_times()
    finally:
        server.kill()
        await server.wait()
    spent = (after.user + after.system) - (before.user + before.system)
    return spent / (calls // concurrency * concurrency) * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", metavar="config", help=f"any of {', '.join(CONFIGS)} (default: all)")
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--logs", action="store_true", help="write the access log as JSON (to /dev/null)")
    args = parser.parse_args()
    unknown = sorted(set(args.configs) - set(CONFIGS))
    if unknown:
        parser.error(f"unknown configs {unknown}; choose from {', '.join(CONFIGS)}")
    configs = ["bare", *[c for c in args.configs or CONFIGS if c != "bare"]]
    best = dict.fromkeys(configs, float("inf"))
    for _ in range(args.rounds):
        for config in configs:
            spent = await cpu_per_call(config, calls=args.calls, concurrency=args.concurrency, logs=args.logs)
            best[config] = min(best[config], spent)
    bare = best["bare"]
    print(f"{'config':22} {'CPU/call':>10} {'added':>8} {'vs bare':>8}")
    for config in configs:
        print(f"{config:22} {best[config]:8.1f}us {best[config] - bare:+7.1f} {bare / best[config]:7.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
