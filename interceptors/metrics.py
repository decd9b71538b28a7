"""Prometheus metrics for the mesh: calls by method and code, latency, in-flight, breaker state.

Everything is registered on an explicit ``CollectorRegistry`` (never the process-global
default), so two servers in one process, or two tests, never share counters. Metric
and label names follow go-grpc-prometheus, so existing dashboards work unchanged.
"""

from __future__ import annotations

import threading
import time
from typing import Any
from wsgiref.simple_server import WSGIServer

import grpc
import grpc.aio
from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, start_http_server

from interceptors.layer import Concern, MethodInfo, Observe
from interceptors.outcome import Outcome
from interceptors.selector import Matcher, every_method

# The circuit breaker's states, in the order dashboards show them.
BREAKER_STATES = ("closed", "open", "half_open")

# Latency buckets (seconds) for an RPC mesh: sub-millisecond loopback up to slow LLM calls.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


class Metrics:
    """The mesh's metrics on one registry; shared by the server interceptor and the client breaker."""

    def __init__(self, *, registry: CollectorRegistry, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.registry = registry
        self.handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, by final status code.",
            ("grpc_type", "grpc_service", "grpc_method", "grpc_code"),
            registry=registry,
        )
        self.latency = Histogram(
            "grpc_server_handling_seconds",
            "Time from the handler starting to its final status, in seconds.",
            ("grpc_type", "grpc_service", "grpc_method"),
            buckets=buckets,
            registry=registry,
        )
        self.in_flight = Gauge(
            "grpc_server_in_flight",
            "RPCs being handled right now.",
            ("grpc_service", "grpc_method"),
            registry=registry,
        )
        self.breaker = Enum(
            "agentmesh_circuit_breaker_state",
            "State of each client-side circuit breaker, by target.",
            ("target",),
            states=list(BREAKER_STATES),
            registry=registry,
        )

    def set_breaker_state(self, target: str, state: str) -> None:
        """Record a circuit breaker's state; ``state`` is one of :data:`BREAKER_STATES`."""
        self.breaker.labels(target).state(state)

    def breaker_state_changed(self, target: str, old: str, new: str) -> None:
        """The same, shaped as a breaker's ``on_state_change(target, old, new)`` listener."""
        self.set_breaker_state(target, str(new))


class MetricsInterceptor(Concern):
    """Count every call by its real final code, time it, and track calls in flight.

    Probes are counted too (unlike the access log): a dashboard shows how often checkers call.
    """

    def __init__(self, *, metrics: Metrics, select: Matcher = every_method) -> None:
        self._metrics = metrics
        self.select = select

    def compile(self, info: MethodInfo) -> Observe:
        # Resolve the labelled children once per method: labels() takes a lock and a
        # dict lookup that the hot path need not repeat.
        service, name, kind = info.service, info.method, info.kind
        metrics = self._metrics
        # Keyed by identity: an Enum hashes in Python, an id() lookup does not.
        by_code = {id(code): metrics.handled.labels(kind, service, name, code.name) for code in grpc.StatusCode}
        latency = metrics.latency.labels(kind, service, name)
        in_flight = metrics.in_flight.labels(service, name)

        clock = time.perf_counter

        def done(context: Any, outcome: Outcome, started: float) -> None:
            in_flight.dec()
            by_code[id(outcome.code)].inc()
            latency.observe(clock() - started)

        return Observe(done, start=in_flight.inc)


def serve_metrics(*, registry: CollectorRegistry, port: int, host: str = "127.0.0.1") -> MetricsServer:
    """Expose ``registry`` for Prometheus on ``http://host:port/metrics`` (port 0: a free port)."""
    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(server, thread)


class MetricsServer:
    """The running exposition endpoint (prometheus-client serves it from its own thread)."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
