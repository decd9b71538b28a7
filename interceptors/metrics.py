"""Prometheus metrics for the mesh: calls by method and code, latency, in-flight, breaker state.

Everything is registered on an explicit ``CollectorRegistry`` (never the process-global
default), so two servers in one process, or two tests, never share counters. Metric
and label names follow go-grpc-prometheus, so existing dashboards work unchanged.

The server's call metrics are plain per-method counters that a collector turns into metric
families when Prometheus scrapes: a call adds to a few list slots, where prometheus-client's
labelled children take a lock and validate on each of the five updates a call makes. They are
only ever written from the event loop's thread; a scrape (from the exposition thread) reads
them as they are, so a sum may be read a call ahead of its count, which a rate() never notices.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Iterator
from typing import Any
from wsgiref.simple_server import WSGIServer

import grpc
import grpc.aio
from prometheus_client import CollectorRegistry, Enum, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

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


_CODES = tuple(grpc.StatusCode)
# Position of each code in a method's counts, by identity (an Enum hashes in Python).
_CODE_INDEX = {id(code): index for index, code in enumerate(_CODES)}


class MethodCalls:
    """The call counts of one method: in flight, finished by code, latency buckets and sum."""

    __slots__ = ("buckets", "handled", "in_flight", "kind", "method", "seconds", "service")

    def __init__(self, kind: str, service: str, method: str, buckets: int) -> None:
        self.kind, self.service, self.method = kind, service, method
        self.in_flight = 0
        self.handled = [0] * len(_CODES)
        self.buckets = [0] * (buckets + 1)  # the last one is +Inf
        self.seconds = 0.0


class ServerCalls(Collector):
    """The collector of every method's :class:`MethodCalls`, as go-grpc-prometheus names them."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = tuple(sorted(bounds))
        self._methods: dict[tuple[str, str, str], MethodCalls] = {}

    def method(self, kind: str, service: str, method: str) -> MethodCalls:
        key = (kind, service, method)
        calls = self._methods.get(key)
        if calls is None:
            calls = self._methods[key] = MethodCalls(kind, service, method, len(self.bounds))
        return calls

    def collect(self) -> Iterator[Any]:
        handled = CounterMetricFamily(
            "grpc_server_handled",
            "RPCs completed on the server, by final status code.",
            labels=("grpc_type", "grpc_service", "grpc_method", "grpc_code"),
        )
        latency = HistogramMetricFamily(
            "grpc_server_handling_seconds",
            "Time from the handler starting to its final status, in seconds.",
            labels=("grpc_type", "grpc_service", "grpc_method"),
        )
        in_flight = GaugeMetricFamily(
            "grpc_server_in_flight", "RPCs being handled right now.", labels=("grpc_service", "grpc_method")
        )
        bounds = [*(repr(float(bound)) for bound in self.bounds), "+Inf"]
        for calls in list(self._methods.values()):
            labels = [calls.kind, calls.service, calls.method]
            for code, count in zip(_CODES, list(calls.handled), strict=True):
                handled.add_metric([*labels, code.name], count)
            cumulative, total = [], 0
            for bound, count in zip(bounds, list(calls.buckets), strict=True):
                total += count
                cumulative.append((bound, float(total)))
            latency.add_metric(labels, cumulative, calls.seconds)
            in_flight.add_metric([calls.service, calls.method], calls.in_flight)
        yield handled
        yield latency
        yield in_flight


class Metrics:
    """The mesh's metrics on one registry; shared by the server interceptor and the client breaker."""

    def __init__(self, *, registry: CollectorRegistry, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.registry = registry
        self.calls = ServerCalls(buckets)
        registry.register(self.calls)
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
        # The method's counts, found once: a call only adds to them.
        calls = self._metrics.calls.method(info.kind, info.service, info.method)
        handled, buckets, bounds = calls.handled, calls.buckets, self._metrics.calls.bounds
        code_index, clock, bucket_of = _CODE_INDEX, time.perf_counter, bisect.bisect_left

        def start() -> None:
            calls.in_flight += 1

        def done(context: Any, outcome: Outcome, started: float) -> None:
            seconds = clock() - started
            calls.in_flight -= 1
            handled[code_index[id(outcome.code)]] += 1
            buckets[bucket_of(bounds, seconds)] += 1  # le is inclusive: the first bound >= seconds
            calls.seconds += seconds

        return Observe(done, start=start)


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
