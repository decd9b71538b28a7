"""How every long-lived client channel to a backend is configured (``runtime.discovery.upstreams``).

The server's keepalive policy is paired with the same interval (``runtime/bootstrap.py``).
"""

from __future__ import annotations

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
