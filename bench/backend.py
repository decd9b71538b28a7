"""The backend every scenario calls: `python -m bench.backend --spec JSON --port-file PATH`.

It serves `AgentService.CreateRun` (answer built from the request) and `AgentService.WatchRun`
(a fixed run of events) with no I/O of its own, so what a scenario measures is the server stack
around it: a bare grpc.aio server, or the project's bootstrap with interceptors from `bench.stacks`.
Run as its own process so its CPU is accounted apart from the client's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from agentmesh.agent.v1 import agent_service_pb2
from bench import payload
from bench.stacks import StackOptions, build_interceptors
from runtime.bootstrap import ManagedServer, ServerPlan, ServiceBinding
from runtime.config import ServiceSettings
from runtime.logging import configure_logging


async def create_run(
    request: agent_service_pb2.CreateRunRequest, context: grpc.aio.ServicerContext[Any, Any]
) -> agent_service_pb2.CreateRunResponse:
    return payload.respond(request)


async def watch_run(
    request: agent_service_pb2.WatchRunRequest, context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[agent_service_pb2.WatchRunResponse]:
    for event in payload.STREAM_EVENTS:
        yield event


# The two methods the bench calls, mounted the way generated `add_..._to_server` code mounts
# a servicer (generic handler plus registered methods), without the methods it never calls.
METHOD_HANDLERS: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
    "CreateRun": grpc.unary_unary_rpc_method_handler(
        create_run,
        request_deserializer=agent_service_pb2.CreateRunRequest.FromString,
        response_serializer=agent_service_pb2.CreateRunResponse.SerializeToString,
    ),
    "WatchRun": grpc.unary_stream_rpc_method_handler(
        watch_run,
        request_deserializer=agent_service_pb2.WatchRunRequest.FromString,
        response_serializer=agent_service_pb2.WatchRunResponse.SerializeToString,
    ),
}


def add_bench_methods(server: grpc.aio.Server) -> None:
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(payload.SERVICE, METHOD_HANDLERS),))
    server.add_registered_method_handlers(payload.SERVICE, METHOD_HANDLERS)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class BackendSpec:
    """How the backend is served. `bootstrap` selects the project's shared bootstrap (health,
    reflection, the drain gate and request decoding, compiled into the handlers) over a bare
    `grpc.aio.server()`."""

    interceptors: tuple[str, ...] = ()
    bootstrap: bool = False
    options: StackOptions = field(default_factory=StackOptions)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> BackendSpec:
        raw = json.loads(text)
        return cls(
            interceptors=tuple(raw["interceptors"]),
            bootstrap=raw["bootstrap"],
            options=StackOptions(**raw["options"]),
        )


async def serve(spec: BackendSpec, port_file: Path) -> None:
    stack = await build_interceptors(spec.interceptors, spec.options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if spec.bootstrap:
        settings = ServiceSettings(port=0, drain_delay_s=0, grace_period_s=1)
        plan = ServerPlan(
            settings=settings,
            bindings=[ServiceBinding(payload.SERVICE, add_bench_methods)],
            interceptors=stack.interceptors,
        )
        for hook in reversed(stack.on_stopped):  # the lifespan closes last-registered first
            plan.lifespan.on_close(hook)
        managed = ManagedServer(plan)
        port = await managed.start()
        write_port(port_file, port)
        await stop.wait()
        await managed.stop()
        return
    server = grpc.aio.server(interceptors=stack.interceptors)
    add_bench_methods(server)
    # Health too (no interceptors either), so Envoy's active health checks find it SERVING.
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    for name in ("", payload.SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    write_port(port_file, port)
    await stop.wait()
    await server.stop(1)
    for hook in stack.on_stopped:
        await hook()


def write_port(port_file: Path, port: int) -> None:
    # Written whole, then renamed, so a reader never sees a half-written number.
    partial = port_file.with_suffix(".partial")
    partial.write_text(str(port))
    partial.replace(port_file)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spec", required=True, help="BackendSpec as JSON")
    parser.add_argument("--port-file", required=True, type=Path)
    args = parser.parse_args()
    configure_logging(level="INFO", fmt="json")
    asyncio.run(serve(BackendSpec.from_json(args.spec), args.port_file))


if __name__ == "__main__":
    main()
