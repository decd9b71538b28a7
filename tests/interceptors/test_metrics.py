"""Calls by method and real code, latency, in-flight and breaker state, on an explicit registry, over HTTP."""

from __future__ import annotations

import asyncio
import time
import urllib.request

import grpc
import grpc.aio
import pytest
from prometheus_client import CollectorRegistry

from interceptors.layer import MethodInfo, Observe
from interceptors.metrics import Metrics, MetricsInterceptor, serve_metrics
from interceptors.outcome import Outcome
from tests.interceptors.probe import Probe, eventually, serve, sv

PROBE = {"grpc_service": "agentmesh.test.Probe"}


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_calls_are_counted_by_method_and_final_code(probe: Probe) -> None:
    registry = CollectorRegistry()
    async with serve(probe, [MetricsInterceptor(metrics=Metrics(registry=registry))]) as client:
        await client.do(sv("ok:a"))
        await client.do(sv("ok:a"))
        with pytest.raises(grpc.aio.AioRpcError):
            await client.do(sv("abort:NOT_FOUND"))
        assert len([m async for m in client.stream(sv("2"))]) == 2
        do = {**PROBE, "grpc_method": "Do", "grpc_type": "unary"}
        await eventually(lambda: _value(registry, "grpc_server_handled_total", **do, grpc_code="NOT_FOUND") == 1)
    assert _value(registry, "grpc_server_handled_total", **do, grpc_code="OK") == 2
    assert _value(registry, "grpc_server_handled_total", **do, grpc_code="NOT_FOUND") == 1
    stream = {**PROBE, "grpc_method": "Stream", "grpc_type": "server_stream"}
    assert _value(registry, "grpc_server_handled_total", **stream, grpc_code="OK") == 1
    assert _value(registry, "grpc_server_handling_seconds_count", **do) == 3


async def test_in_flight_counts_running_calls_and_returns_to_zero(probe: Probe) -> None:
    registry = CollectorRegistry()
    labels = {**PROBE, "grpc_method": "Do"}
    async with serve(probe, [MetricsInterceptor(metrics=Metrics(registry=registry))]) as client:
        call = client.do(sv("gate"))
        await asyncio.wait_for(probe.started.wait(), 10)
        assert _value(registry, "grpc_server_in_flight", **labels) == 1
        probe.gate.set()
        await call
    assert _value(registry, "grpc_server_in_flight", **labels) == 0


def test_breaker_state_is_one_of_closed_open_half_open() -> None:
    metrics = Metrics(registry=CollectorRegistry())
    metrics.set_breaker_state("rag:50051", "open")
    sample = metrics.registry.get_sample_value
    assert (
        sample(
            "agentmesh_circuit_breaker_state",
            {"target": "rag:50051", "agentmesh_circuit_breaker_state": "open"},
        )
        == 1
    )
    assert (
        sample(
            "agentmesh_circuit_breaker_state",
            {"target": "rag:50051", "agentmesh_circuit_breaker_state": "closed"},
        )
        == 0
    )


async def test_metrics_are_served_over_http() -> None:
    metrics = Metrics(registry=CollectorRegistry())
    metrics.set_breaker_state("agent", "half_open")
    server = serve_metrics(registry=metrics.registry, port=0)
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read().decode())
    finally:
        server.close()
    assert 'agentmesh_circuit_breaker_state{agentmesh_circuit_breaker_state="half_open",target="agent"} 1.0' in body


def test_two_registries_never_share_counters() -> None:
    Metrics(registry=CollectorRegistry())
    Metrics(registry=CollectorRegistry())  # would raise "Duplicated timeseries" on a shared registry


def test_a_breaker_listener_records_the_new_state() -> None:
    metrics = Metrics(registry=CollectorRegistry())
    metrics.breaker_state_changed("agent", "closed", "open")
    state = {"target": "agent", "agentmesh_circuit_breaker_state": "open"}
    assert metrics.registry.get_sample_value("agentmesh_circuit_breaker_state", state) == 1


def test_latency_lands_in_the_first_bucket_whose_bound_it_does_not_exceed() -> None:
    registry = CollectorRegistry()
    interceptor = MetricsInterceptor(metrics=Metrics(registry=registry))
    step = interceptor.compile(MethodInfo("/pkg.S/M", "pkg.S", "M", False, False))
    assert isinstance(step, Observe) and step.start is not None
    for seconds in (0.0004, 0.03, 0.03, 100.0):
        step.start()
        step.done(None, Outcome(grpc.StatusCode.OK), time.perf_counter() - seconds)  # type: ignore[arg-type]
    labels = {"grpc_type": "unary", "grpc_service": "pkg.S", "grpc_method": "M"}

    def bucket(le: str) -> float | None:
        return registry.get_sample_value("grpc_server_handling_seconds_bucket", {**labels, "le": le})

    assert (bucket("0.0005"), bucket("0.025"), bucket("0.05"), bucket("60.0"), bucket("+Inf")) == (1, 1, 3, 3, 4)
    assert registry.get_sample_value("grpc_server_handling_seconds_count", labels) == 4
    assert (registry.get_sample_value("grpc_server_handling_seconds_sum", labels) or 0.0) >= 100.06
    assert registry.get_sample_value("grpc_server_in_flight", {"grpc_service": "pkg.S", "grpc_method": "M"}) == 0
