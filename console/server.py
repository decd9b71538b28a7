"""Assemble and run the console: the OTLP receiver (grpc.aio) and the web app (uvicorn) in one loop.

Resources open in one place, ``Console.open``, each registering its close as it is opened, so a
failure half-way closes what was opened and shutdown closes in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc.aio
import structlog
import uvicorn
from starlette.applications import Starlette

from console.app import create_app
from console.config import ConsoleSettings
from console.envoy_hosts import EnvoyHosts
from console.inventory import ConsulInventory, Inventory, StaticInventory
from console.live import LiveView
from console.otlp_receiver import TraceReceiver
from console.prometheus import GoldenSignals, PromQL
from console.runs import RunsClient
from console.trace_store import TraceStore
from runtime.discovery.factory import consul_address
from runtime.discovery.settings import DiscoverySettings
from runtime.ports import PortTaken, port_holder, taken_message
from runtime.settings_errors import env_name

log = structlog.get_logger(__name__)


@dataclass
class Console:
    app: Starlette
    traces: TraceStore
    live: LiveView
    otlp_port: int


def _inventory(settings: ConsoleSettings, discovery: DiscoverySettings) -> Inventory:
    if discovery.discovery == "consul":
        return ConsulInventory(consul_address(discovery), settings.services)
    return StaticInventory(settings.targets, settings.versions)


@contextlib.asynccontextmanager
async def open_console(settings: ConsoleSettings, discovery: DiscoverySettings | None = None) -> AsyncIterator[Console]:
    """Everything the console runs on, opened and closed here (the web server is the caller's)."""
    discovery = discovery or DiscoverySettings()
    async with contextlib.AsyncExitStack() as stack:
        traces = TraceStore(max_traces=settings.trace_ring_size, max_spans_per_trace=settings.max_spans_per_trace)
        receiver = grpc.aio.server()
        receiver.add_generic_rpc_handlers((TraceReceiver(traces, drop_span_prefixes=settings.drop_span_prefixes),))
        try:
            otlp_port = receiver.add_insecure_port(f"{settings.otlp_host}:{settings.otlp_port}")
        except RuntimeError:  # grpc's "Failed to bind to address"
            otlp_port = 0
        if otlp_port == 0 and settings.otlp_port and port_holder(settings.otlp_port) is not None:
            raise PortTaken(taken_message(settings.otlp_port, env_name(ConsoleSettings, "otlp_port")))
        if otlp_port == 0:
            raise RuntimeError(f"the OTLP receiver could not listen on {settings.otlp_host}:{settings.otlp_port}")
        await receiver.start()
        stack.push_async_callback(receiver.stop, 1.0)
        promql = PromQL(settings.prometheus_url)
        stack.push_async_callback(promql.aclose)
        inventory = _inventory(settings, discovery)
        stack.push_async_callback(inventory.aclose)
        runs = RunsClient(
            settings.gateway,
            token_file=settings.gateway_token_file,
            ca_file=settings.gateway_ca_file,
            server_name=settings.gateway_server_name,
        )
        stack.push_async_callback(runs.aclose)
        envoy = EnvoyHosts(settings.envoy_admins, settings.envoy_upstreams)
        stack.push_async_callback(envoy.aclose)
        live = LiveView(
            inventory=inventory,
            envoy=envoy,
            signals=GoldenSignals(promql, window=settings.rate_window),
            traces=traces,
            refresh_s=settings.refresh_s,
            edge_window_s=60.0,
        )
        live.start()
        stack.push_async_callback(live.stop)
        token = settings.token.get_secret_value() if settings.token is not None else None
        app = create_app(live=live, traces=traces, runs=runs, token=token)
        yield Console(app=app, traces=traces, live=live, otlp_port=otlp_port)


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise PortTaken(taken_message(port, env_name(ConsoleSettings, "port"))) from None
        raise
    sock.listen(128)
    sock.setblocking(False)
    return sock


@dataclass
class RunningConsole:
    console: Console
    url: str
    http_port: int
    server: uvicorn.Server
    task: asyncio.Task[None]


@contextlib.asynccontextmanager
async def running_console(
    settings: ConsoleSettings, discovery: DiscoverySettings | None = None
) -> AsyncIterator[RunningConsole]:
    """The console serving HTTP on ``settings.host:port`` until the block exits (or a signal stops uvicorn)."""
    async with open_console(settings, discovery) as console:
        sock = _listen(settings.host, settings.port)
        http_port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            console.app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=3
        )
        server = uvicorn.Server(config)
        with sock:
            task = asyncio.create_task(server.serve(sockets=[sock]), name="console-http")
            # No wait for uvicorn to start: the socket already listens, so early requests queue.
            try:
                yield RunningConsole(console, f"http://{settings.host}:{http_port}", http_port, server, task)
            finally:
                server.should_exit = True
                await task


async def serve(settings: ConsoleSettings) -> None:
    """Run until SIGINT/SIGTERM (uvicorn handles the signals and drains the web side)."""
    async with running_console(settings) as running:
        if settings.port_file is not None:
            settings.port_file.write_text(json.dumps({"http": running.http_port, "otlp": running.console.otlp_port}))
        log.info("console listening", url=running.url, otlp=running.console.otlp_port)
        await asyncio.shield(running.task)


def main() -> int:
    from runtime.logging import configure_logging  # noqa: PLC0415
    from runtime.settings_errors import EXIT_INVALID_SETTING, InvalidSetting, load_settings  # noqa: PLC0415

    try:
        settings = load_settings(ConsoleSettings)
        load_settings(DiscoverySettings)
    except InvalidSetting as error:
        print(error, file=sys.stderr)
        return EXIT_INVALID_SETTING
    configure_logging(level="INFO", fmt="console")
    try:
        asyncio.run(serve(settings))
    except PortTaken as taken:
        print(taken, file=sys.stderr)
        return 1
    return 0
