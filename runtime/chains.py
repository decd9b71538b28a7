"""A service's interceptor chains (server and client) built from its settings, with what they need.

The chain's parts are ordered in ``interceptors.chain``; this module only turns settings
into the parts (tracer provider, metrics registry and endpoint, idempotency store) and
closes them when the server stops. Nothing here is global: each service, and each test,
gets its own registry and provider.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc.aio
from opentelemetry.sdk.trace import SpanProcessor
from prometheus_client import CollectorRegistry

from interceptors._typing import ServerInterceptorBase
from interceptors.access_log import AccessLogInterceptor, AccessLogWriter
from interceptors.chain import client_chain, server_chain
from interceptors.idempotency import IdempotencyInterceptor, IdempotencyStore, IdempotentMethod, MemoryStore
from interceptors.layer import Concern, ServerChain
from interceptors.metrics import Metrics, MetricsServer, serve_metrics
from interceptors.tracing import Tracing, setup_tracing
from runtime.config import ServiceSettings
from runtime.database.urls import EXAMPLE_URL
from runtime.idempotency import DatabaseStore, RedisStore
from runtime.logging import access_log_writer
from runtime.settings_errors import InvalidSetting


@dataclass
class ServiceChains:
    """The chains of one service: server and client interceptors plus the resources behind them.

    Not a web framework's middleware: the grpc.aio interceptors of one service, built once.
    """

    server_chain: ServerChain
    metrics: Metrics
    tracing: Tracing
    deadline_margin_s: float
    _store: IdempotencyStore | None = None
    _access_writer: AccessLogWriter | None = None
    _metrics_server: MetricsServer | None = None
    _closed: bool = field(default=False, repr=False)

    @classmethod
    def start(
        cls,
        settings: ServiceSettings,
        *,
        service: str,
        auth: Concern | None = None,
        rate_limit: Concern | None = None,
        span_processors: Sequence[SpanProcessor] = (),
        database_url: str = "",
    ) -> ServiceChains:
        """The chain for ``service`` (e.g. "agent").

        ``auth`` and ``rate_limit`` fill the chain's slots; ``span_processors`` add to the
        configured span export (tests pass an in-memory exporter); ``database_url`` is the
        service's own database, where ``idempotency_store="postgres"`` keeps its keys unless
        ``idempotency_database_url`` names another (and the default store once it is set).
        """
        tracing = setup_tracing(
            service_name=f"agentmesh-{service}",
            otlp_endpoint=settings.otlp_endpoint,
            sample_ratio=settings.trace_sample_ratio,
            span_processors=span_processors,
        )
        metrics = Metrics(registry=CollectorRegistry())
        store = _store(settings, service, database_url) if settings.idempotent_methods else None
        idempotency = (
            None
            if store is None
            else IdempotencyInterceptor(
                store=store,
                methods={
                    method: IdempotentMethod(request_field=request_field or None)
                    for method, request_field in settings.idempotent_methods.items()
                },
                ttl=settings.idempotency_ttl_s,
            )
        )
        metrics_server = (
            serve_metrics(registry=metrics.registry, port=settings.metrics_port, host=settings.metrics_host)
            if settings.metrics_port
            else None
        )
        # JSON logs: access lines rendered and written in batches by their own writer (the
        # same fields as a structlog line); otherwise through structlog.
        writer = access_log_writer()
        return cls(
            server_chain=server_chain(
                tracing=tracing,
                metrics=metrics,
                access_log=AccessLogInterceptor(writer=writer, ok_every=settings.access_log_ok_every),
                default_deadline_s=settings.default_deadline_s,
                auth=auth,
                rate_limit=rate_limit,
                idempotency=idempotency,
            ),
            metrics=metrics,
            tracing=tracing,
            deadline_margin_s=settings.deadline_margin_s,
            _store=store,
            _access_writer=writer,
            _metrics_server=metrics_server,
        )

    @property
    def server_interceptors(self) -> list[ServerInterceptorBase]:
        """For ``ServerPlan.interceptors``: the chain, which the bootstrap compiles into the handlers."""
        return [self.server_chain]

    def client_interceptors(
        self,
        *,
        forwarding: Sequence[grpc.aio.ClientInterceptor] = (),
        retry: Sequence[grpc.aio.ClientInterceptor] = (),
        circuit_breaker: Sequence[grpc.aio.ClientInterceptor] = (),
    ) -> list[grpc.aio.ClientInterceptor]:
        """The interceptors for the service's upstream channels, with the resilience slots filled.

        Breakers report their state through ``self.metrics.breaker_state_changed``.
        """
        return client_chain(
            tracing=self.tracing,
            deadline_margin_s=self.deadline_margin_s,
            forwarding=forwarding,
            retry=retry,
            circuit_breaker=circuit_breaker,
        )

    async def close(self) -> None:
        """Stop the metrics endpoint, close the idempotency store, flush spans (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._access_writer is not None:
            self._access_writer.flush()
        # Both block (the HTTP server's poll loop, a final span export): off the event loop.
        if self._metrics_server is not None:
            await asyncio.to_thread(self._metrics_server.close)
        if self._store is not None:
            await self._store.close()
        await asyncio.to_thread(self.tracing.provider.shutdown)


def _store(settings: ServiceSettings, service: str, database_url: str) -> IdempotencyStore:
    # A service on a shared database keeps its keys there too unless told otherwise: a replay
    # must find the record on whichever replica takes the retry.
    chosen = settings.idempotency_store
    if database_url and "idempotency_store" not in settings.model_fields_set:
        chosen = "postgres"
    prefix = f"AGENTMESH_{service.upper()}_"
    if chosen in ("postgres", "sqlite"):
        # Both URL settings are validated with the service's settings (runtime.database.urls).
        url = (settings.idempotency_database_url or database_url) if chosen == "postgres" else ""
        if chosen == "postgres" and not url:
            raise InvalidSetting(
                f"{prefix}IDEMPOTENCY_STORE=postgres needs a PostgreSQL URL: set {prefix}IDEMPOTENCY_DATABASE_URL"
                f" (or {prefix}DATABASE_URL) to {EXAMPLE_URL}"
            )
        return DatabaseStore.at(
            url,
            sqlite_path=settings.data_dir / f"{service}-idempotency.sqlite3",
            setting=f"{prefix}IDEMPOTENCY_DATABASE_URL",
            # Services sharing one PostgreSQL database share the table; a SQLite file is the service's own.
            prefix=f"{service}:" if url else "",
        )
    if chosen == "redis":
        return RedisStore.from_url(settings.idempotency_redis_url, prefix=f"agentmesh:{service}:idempotency:")
    return MemoryStore()
