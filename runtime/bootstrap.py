"""The one way every agentmesh grpc.aio server starts, serves and stops.

What each server gets, in one place: `grpc.health.v1` with a status per service, reflection
(v1 and v1alpha), the server chain compiled into every handler as it is registered
(`interceptors.layer`: grpc.aio then runs no interceptor per call and finds every method in
one compiled table, one dict lookup),
structured logs, and a graceful drain on SIGTERM/SIGINT:

1. health turns NOT_SERVING for every service and new calls get UNAVAILABLE (DRAINING);
   the lifespan's `on_drain` hooks run here (e.g. deregistering from discovery) so peers stop sending;
2. after `drain_delay_s`, the server stops: in-flight calls, streams included, get up to
   `grace_period_s` to finish, then are cancelled;
3. the lifespan closes what `build()` opened, last opened first (`runtime.lifespan`), and the
   process exits 0, or 1 when a supervised background loop stopped the service.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import grpc
import structlog
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from interceptors.chain import bootstrap_chain
from interceptors.drain import DrainInterceptor
from interceptors.layer import ServerChain
from runtime.channel_options import KEEPALIVE_TIME_MS
from runtime.config import ServiceSettings
from runtime.discovery.settings import DiscoverySettings
from runtime.heap import freeze_long_lived
from runtime.lifespan import Lifespan
from runtime.live_config.settings import DynamicSettings
from runtime.logging import configure_logging
from runtime.ports import port_holder, taken_message
from runtime.processes import run_processes
from runtime.reflection import enable_reflection
from runtime.settings_errors import EXIT_INVALID_SETTING, InvalidSetting, env_name, explain_os_error

log = structlog.get_logger(__name__)

_S = TypeVar("_S", bound=ServiceSettings)
_S_contra = TypeVar("_S_contra", bound=ServiceSettings, contravariant=True)


@dataclass(frozen=True, slots=True)
class ServiceBinding:
    """A servicer to mount: its fully-qualified name and the generated `add_..._to_server`."""

    name: str
    add_to_server: Callable[[grpc.aio.Server], None]


@dataclass
class ServerPlan:
    """Everything a service hands to the bootstrap. Built by `services/<name>/server.py`."""

    settings: ServiceSettings
    bindings: Sequence[ServiceBinding]
    # The service's `interceptors.chain.server_chain(...)` (compiled into the handlers), and any
    # other grpc.aio interceptors, which run per call at lookup, in front of it.
    interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]] = ()
    generic_handlers: Sequence[grpc.GenericRpcHandler[Any, Any]] = ()
    # Extra names for reflection, and the pool to describe them from (the gateway describes
    # the services it routes to, from the descriptor set, without importing their code).
    reflection_names: Sequence[str] = ()
    reflection_pool: descriptor_pool.DescriptorPool | None = None
    # What build() opened and how to close it, plus the hooks around serving.
    lifespan: Lifespan = field(default_factory=Lifespan)


def server_options(settings: ServiceSettings) -> list[tuple[str, Any]]:
    """grpc.aio server options from a service's settings."""
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # On only when several processes serve the port (runtime/processes.py): otherwise a
        # second server started on the same port by mistake would silently share it.
        ("grpc.so_reuseport", 1 if settings.processes > 1 else 0),
        # Our clients ping every KEEPALIVE_TIME_MS while a call is open, and a health Watch
        # stays open with no data for minutes. gRPC servers count pings closer than 5 minutes
        # without data as strikes and answer GOAWAY "too_many_pings", dropping the channel.
        ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_TIME_MS // 2),
    ]


class ManagedServer:
    """A started server. `stop()` performs the drain described in the module docstring."""

    def __init__(self, plan: ServerPlan) -> None:
        self.plan = plan
        chains = [i for i in plan.interceptors if isinstance(i, ServerChain)]
        if len(chains) > 1:
            raise ValueError("a server has one chain (interceptors.chain.server_chain); got several")
        self.chain = chains[0] if chains else bootstrap_chain()
        drain = self.chain.concern(DrainInterceptor)
        if drain is None:
            raise ValueError("the server chain has no drain gate; build it with interceptors.chain.server_chain")
        self._drain = drain
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        opts = server_options(plan.settings)
        others = [i for i in plan.interceptors if not isinstance(i, ServerChain)]
        self.server = grpc.aio.server(interceptors=others or None, options=opts)
        # What registers handlers (generated add_*_to_server, health, reflection) registers them
        # here, compiled with the chain.
        self._registrar = self.chain.registrar(self.server)
        self.port = 0
        self._stopping: asyncio.Task[None] | None = None
        self.stop_begun = asyncio.Event()  # a drain began: by a signal or by a failed supervised loop
        # A supervised loop that must not fail alone (on_crash="stop") drains the whole server.
        plan.lifespan.bind_stop(self.stop)

    @property
    def service_names(self) -> list[str]:
        return [b.name for b in self.plan.bindings]

    async def start(self) -> int:
        plan = self.plan
        registrar = self._registrar
        for binding in plan.bindings:
            binding.add_to_server(registrar)
        if plan.generic_handlers:
            registrar.add_generic_rpc_handlers(tuple(plan.generic_handlers))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, registrar)
        names = [*self.service_names, *plan.reflection_names, health.SERVICE_NAME]
        enable_reflection(registrar, names, pool=plan.reflection_pool)
        # NOT_SERVING until the start-up hooks are done (a database waited for, migrations,
        # recovery): probes see the process alive but not ready, and no peer routes to it yet.
        served = ["", *self.service_names, *plan.reflection_names]
        try:
            self.port = self._listen()
            for name in served:
                await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
            await self.server.start()
            if plan.settings.port_file is not None:
                plan.settings.port_file.parent.mkdir(parents=True, exist_ok=True)
                plan.settings.port_file.write_text(str(self.port))
            await plan.lifespan.started(self.port)
            for name in served:
                await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        except BaseException as error:
            # A half-started server must not linger (its grpc threads would keep the process
            # alive, answering health checks): stop it, release what was opened, re-raise.
            if isinstance(error, InvalidSetting | OSError):
                # A setting's fault (a port in use, a missing key file): run_service says which, in one line.
                log.error("start-up failed; stopping", error=str(error))
            else:
                log.exception("start-up failed; stopping")
            await self.server.stop(0)
            await plan.lifespan.aclose()
            raise
        log.info("server started", address=f"{plan.settings.host}:{self.port}", services=names)
        return self.port

    def _listen(self) -> int:
        settings = self.plan.settings
        address = f"{settings.host}:{settings.port}"
        tls = settings.tls
        try:
            if tls is None:
                return self.server.add_insecure_port(address)
            credentials = grpc.ssl_server_credentials(
                [(tls.key_file.read_bytes(), tls.cert_file.read_bytes())],
                root_certificates=tls.client_ca_file.read_bytes() if tls.client_ca_file else None,
                require_client_auth=tls.client_ca_file is not None,
            )
            return self.server.add_secure_port(address, credentials)
        except RuntimeError as error:  # grpc's "Failed to bind to address"
            host, port = env_name(type(settings), "host"), env_name(type(settings), "port")
            if settings.port and port_holder(settings.port) is not None:
                raise InvalidSetting(taken_message(settings.port, port)) from None
            raise InvalidSetting(f"{host}, {port}: cannot listen on {address} (in use or not local): {error}") from None

    def stop(self) -> asyncio.Task[None]:
        """Begin the drain (idempotent); await the returned task for it to finish."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop())
            self.stop_begun.set()
        return self._stopping

    async def _stop(self) -> None:
        settings = self.plan.settings
        log.info("draining", drain_delay_s=settings.drain_delay_s, grace_period_s=settings.grace_period_s)
        self._drain.draining = True
        await self.health.enter_graceful_shutdown()
        await self.plan.lifespan.drain()
        await asyncio.sleep(settings.drain_delay_s)
        await self.server.stop(settings.grace_period_s)
        await self.plan.lifespan.aclose()
        log.info("stopped")


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def serve_until_signal(build: Callable[[], Awaitable[ServerPlan]]) -> int:
    """Build the plan, serve, and drain on SIGTERM/SIGINT. Returns the process exit code."""
    loop = asyncio.get_running_loop()
    # A signal during build is kept (and then abandons the start, below), rather than killing
    # a half-built process. Forked workers start with these signals blocked
    # (runtime/processes.py), so none is lost before the handlers exist.
    signalled = asyncio.Event()
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, signalled.set)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    plan = await build()
    server = ManagedServer(plan)
    # A signal during start-up (waiting for a database, say) abandons the start: start() then
    # stops the half-started server and closes what was opened (aclose again covers a start
    # cancelled before it began; it is idempotent).
    starting = asyncio.ensure_future(server.start())

    def abandon_start() -> None:
        signalled.set()
        starting.cancel()

    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, abandon_start)
    if signalled.is_set():
        starting.cancel()
    try:
        await starting
    except asyncio.CancelledError:
        await plan.lifespan.aclose()
        log.info("stopped during start-up")
        return 0
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, server.stop)
    if signalled.is_set():
        # The signal came as the start was finishing, too late to cancel it: drain now.
        server.stop()
    await server.stop_begun.wait()
    await server.stop()
    if plan.lifespan.failure is not None:
        log.error("service stopped by a failure", reason=plan.lifespan.failure)
        return 1
    return 0


class ServiceBuild(Protocol[_S_contra]):
    """A service's ``build()``: its settings and the platform's, each loaded once by ``run_service``."""

    def __call__(
        self, settings: _S_contra, discovery: DiscoverySettings, /, *, dynamic: DynamicSettings
    ) -> Awaitable[ServerPlan]: ...


def serve_service(settings: _S, discovery: DiscoverySettings, dynamic: DynamicSettings, build: ServiceBuild[_S]) -> int:
    """Logs, serve, drain, for settings read by ``runtime.entry.run_service``.

    A setting found unusable while building or starting the server ends the process with one
    line on stderr naming the variable and what it accepts (exit 2), as one found while reading.
    """
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    # The service's modules are imported: they live as long as the process (runtime/heap.py).
    freeze_long_lived("importing the service")

    def serve(settings: _S) -> int:
        return asyncio.run(serve_until_signal(lambda: build(settings, discovery, dynamic=dynamic)))

    try:
        if settings.processes > 1:
            return run_processes(settings, serve)
        return serve(settings)
    except InvalidSetting as error:
        print(error, file=sys.stderr)
        return EXIT_INVALID_SETTING
    except OSError as error:
        # A file a setting names (TLS keys, a JWKS, the descriptor set) that cannot be opened.
        line = explain_os_error([settings, discovery], error)
        if line is None:
            raise
        print(line, file=sys.stderr)
        return EXIT_INVALID_SETTING
