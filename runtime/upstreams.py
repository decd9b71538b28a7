"""Channels to named backends ("agent", "rag"), one long-lived grpc.aio channel per backend.

`runtime.discovery.upstreams.DiscoveryUpstreams` implements this protocol over any resolver:
static endpoints from configuration (the embedded default) or Consul.
"""

from __future__ import annotations

from typing import Protocol

import grpc

# Keepalive keeps idle pooled connections healthy through NATs and proxies; reconnect
# backoff bounded so a restarted backend is found again quickly. gRPC's retries are on only
# for its transparent retries of calls that never left the client (always safe); retrying
# calls that did is the retry interceptor's job (interceptors/retry.py), which can honour
# RetryInfo and the circuit breaker, so no service-config retryPolicy is set by the services.
KEEPALIVE_TIME_MS = 30_000
CHANNEL_OPTIONS: tuple[tuple[str, object], ...] = (
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    ("grpc.enable_retries", 1),
)


class Upstreams(Protocol):
    def channel(self, backend: str) -> grpc.aio.Channel: ...

    async def close(self) -> None: ...


class UnknownBackendError(KeyError):
    pass
