"""The interceptors a bench backend can be given, by name, built with their real constructors.

Scenarios name interceptors (`"tracing"`, `"idempotency-sqlite"`, `"chain"`, ...); this module is
the one place that knows how to construct each for a benchmark: the configuration a production
server would use, with local stores. `"chain"` is the whole chain exactly as the services build it
from their settings (`runtime.chains.ServiceChains`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from prometheus_client import CollectorRegistry

from bench.payload import UNARY_METHOD
from interceptors.access_log import AccessLogInterceptor
from interceptors.deadline import DeadlineInterceptor
from interceptors.idempotency import IdempotencyInterceptor, IdempotencyStore, IdempotentMethod, MemoryStore
from interceptors.metrics import Metrics, MetricsInterceptor
from interceptors.recovery import RecoveryInterceptor
from interceptors.tracing import TracingInterceptor, setup_tracing
from runtime.chains import ServiceChains
from runtime.config import ServiceSettings
from runtime.idempotency import DatabaseStore, RedisStore
from runtime.logging import access_log_writer
from runtime.security import AuthSettings, auth_interceptor

Hook = Callable[[], Awaitable[None]]
# The share of traces recorded in the "tracing-sampled" scenario: a production-like ratio.
SAMPLED_RATIO = 0.1


@dataclass(frozen=True)
class StackOptions:
    """What some interceptors need from the harness: where Redis is, where files may go."""

    redis_url: str | None = None
    postgres_url: str | None = None
    data_dir: str = "var/bench"
    # The public keys tokens are checked against, for interceptors doing auth.
    jwks_file: str | None = None


@dataclass
class Stack:
    interceptors: list[grpc.aio.ServerInterceptor[Any, Any]] = field(default_factory=list)
    on_stopped: list[Hook] = field(default_factory=list)


class DiscardingExporter(SpanExporter):
    """Takes finished spans and drops them: the cost of recording without a collector to send to."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


Factory = Callable[[StackOptions, Stack], Awaitable[None]]


async def _tracing(options: StackOptions, stack: Stack) -> None:
    # As configured by default: no exporter, so no span records and only the context is kept.
    stack.interceptors.append(TracingInterceptor(tracing=setup_tracing(service_name="agentmesh-bench")))


async def _tracing_sampled(options: StackOptions, stack: Stack) -> None:
    tracing = setup_tracing(
        service_name="agentmesh-bench",
        sample_ratio=SAMPLED_RATIO,
        span_processors=[BatchSpanProcessor(DiscardingExporter())],
    )
    stack.interceptors.append(TracingInterceptor(tracing=tracing))
    stack.on_stopped.append(_shutdown(tracing.provider))


async def _otel_instrumentation(options: StackOptions, stack: Stack) -> None:
    # The stock interceptor, every call recorded (the reference the tracing interceptor is held to).
    tracing = setup_tracing(service_name="agentmesh-bench", span_processors=[BatchSpanProcessor(DiscardingExporter())])
    stack.interceptors.append(aio_server_interceptor(tracer_provider=tracing.provider))  # type: ignore[no-untyped-call]
    stack.on_stopped.append(_shutdown(tracing.provider))


def _shutdown(provider: Any) -> Hook:
    async def shutdown() -> None:
        provider.shutdown()

    return shutdown


async def _metrics(options: StackOptions, stack: Stack) -> None:
    stack.interceptors.append(MetricsInterceptor(metrics=Metrics(registry=CollectorRegistry())))


async def _logs(options: StackOptions, stack: Stack) -> None:
    # One JSON access line per call, to the backend's log file (the bench backend logs at INFO),
    # written as the services write it: by the JSON writer configure_logging set up.
    stack.interceptors.append(AccessLogInterceptor(writer=access_log_writer()))


async def _errors(options: StackOptions, stack: Stack) -> None:
    stack.interceptors.append(RecoveryInterceptor())


async def _deadline(options: StackOptions, stack: Stack) -> None:
    stack.interceptors.append(DeadlineInterceptor(default_timeout=30.0))


def _idempotency(make_store: Callable[[StackOptions], IdempotencyStore]) -> Factory:
    async def factory(options: StackOptions, stack: Stack) -> None:
        store = make_store(options)
        stack.interceptors.append(
            IdempotencyInterceptor(store=store, methods={UNARY_METHOD: IdempotentMethod(request_field="request_id")})
        )
        stack.on_stopped.append(store.close)

    return factory


def _redis_store(options: StackOptions) -> IdempotencyStore:
    if options.redis_url is None:
        raise ValueError("idempotency-redis needs a Redis URL (the harness starts redis-server)")
    return RedisStore.from_url(options.redis_url, prefix="agentmesh:bench:idempotency:")


def _postgres_store(options: StackOptions) -> IdempotencyStore:
    if options.postgres_url is None:
        raise ValueError("idempotency-postgres needs a PostgreSQL URL (the harness starts a local cluster)")
    return DatabaseStore.at(
        options.postgres_url, sqlite_path=Path("unused"), setting="AGENTMESH_BENCH_POSTGRES_URL", prefix="bench:"
    )


def _auth_settings(options: StackOptions) -> AuthSettings:
    if options.jwks_file is None:
        raise ValueError("auth needs a JWKS file (the harness issues one)")
    return AuthSettings(jwks_file=Path(options.jwks_file))


async def _auth(options: StackOptions, stack: Stack) -> None:
    interceptor = auth_interceptor(_auth_settings(options), service="bench")
    assert interceptor is not None  # settings were given
    stack.interceptors.append(interceptor)


async def _chain(options: StackOptions, stack: Stack) -> None:
    # The whole server chain as every service builds it from its settings: auth with the mesh's
    # scope table, CreateRun taking idempotency keys (kept in SQLite, the default).
    settings = ServiceSettings(
        data_dir=Path(options.data_dir),
        idempotent_methods={UNARY_METHOD: "request_id"},
        idempotency_store="sqlite",
        auth=_auth_settings(options),
    )
    chains = ServiceChains.start(settings, service="bench", auth=auth_interceptor(settings.auth, service="bench"))
    stack.interceptors.extend(chains.server_interceptors)
    stack.on_stopped.append(chains.close)


FACTORIES: dict[str, Factory] = {
    "auth": _auth,
    "tracing": _tracing,
    "tracing-sampled": _tracing_sampled,
    "otel-instrumentation": _otel_instrumentation,
    "metrics": _metrics,
    "logs": _logs,
    "errors": _errors,
    "deadline": _deadline,
    "idempotency-memory": _idempotency(lambda options: MemoryStore()),
    "idempotency-sqlite": _idempotency(
        lambda options: DatabaseStore.at(
            "", sqlite_path=Path(options.data_dir) / "idempotency.sqlite3", setting="AGENTMESH_BENCH_DATA_DIR"
        )
    ),
    "idempotency-redis": _idempotency(_redis_store),
    "idempotency-postgres": _idempotency(_postgres_store),
    "chain": _chain,
}

# Interceptors whose store is a Redis server; the harness starts one for them.
NEEDS_REDIS: frozenset[str] = frozenset({"idempotency-redis"})
# Interceptors whose store is a PostgreSQL database; the harness starts a local cluster for them.
NEEDS_POSTGRES: frozenset[str] = frozenset({"idempotency-postgres"})
# Interceptors that check bearer tokens; the harness issues keys and a token for them.
NEEDS_AUTH: frozenset[str] = frozenset({"auth", "chain"})


async def build_interceptors(names: Sequence[str], options: StackOptions) -> Stack:
    stack = Stack()
    for name in names:
        try:
            factory = FACTORIES[name]
        except KeyError:
            raise ValueError(f"unknown interceptor {name!r}; known: {sorted(FACTORIES)}") from None
        await factory(options, stack)
    return stack
