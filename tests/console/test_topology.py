"""Edges carry who called whom: Prometheus says how often a method ran, spans say for which caller."""

from __future__ import annotations

import time
from dataclasses import replace

import grpc.aio
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from console.inventory import Instance, probe
from console.prometheus import MethodSignals, Signals
from console.topology import CLIENT, build, observe_calls
from console.trace_store import STATUS_UNSET, Span
from tests.ports import free_port

SEARCH = "/agentmesh.rag.v1.RagService/Search"
CREATE = "/agentmesh.agent.v1.AgentService/CreateRun"
NOW = time.time_ns()


def server_span(span_id: str, service: str, name: str, parent: str = "", *, code: int = 0) -> Span:
    return Span(
        trace_id="ab" * 16, span_id=span_id, parent_span_id=parent, service=f"agentmesh-{service}", name=name,
        kind="SERVER", start_ns=NOW - 1_000_000, end_ns=NOW, status_code=STATUS_UNSET, status_message="",
        attributes={"rpc.grpc.status_code": code},
    )  # fmt: skip


def client_span(span_id: str, service: str, name: str, parent: str) -> Span:
    return replace(server_span(span_id, service, name, parent), kind="CLIENT")


def instance(service: str, port: int, version: str = "v1") -> Instance:
    return Instance(service, f"127.0.0.1:{port}", f"127.0.0.1:{port}", version, "passing", "SERVING")


def spans_of_one_round(n: int) -> list[Span]:
    """client → gateway CreateRun → agent → rag Search, and client → gateway Search (bad request) → rag."""
    p = f"{n:02x}"
    return [
        server_span(f"{p}00000000000001", "gateway", CREATE),
        client_span(f"{p}00000000000002", "gateway", CREATE, f"{p}00000000000001"),
        server_span(f"{p}00000000000003", "agent", CREATE, f"{p}00000000000002"),
        client_span(f"{p}00000000000004", "agent", SEARCH, f"{p}00000000000003"),
        server_span(f"{p}00000000000005", "rag", SEARCH, f"{p}00000000000004"),
        server_span(f"{p}00000000000006", "gateway", SEARCH, code=3),
        client_span(f"{p}00000000000007", "gateway", SEARCH, f"{p}00000000000006"),
        server_span(f"{p}00000000000008", "rag", SEARCH, f"{p}00000000000007", code=3),
    ]


def test_a_callee_s_rate_is_split_between_its_callers_and_errors_go_to_the_caller_that_got_them() -> None:
    spans = [s for n in range(4) for s in spans_of_one_round(n)]
    observed = observe_calls(spans, window_s=60, now_ns=NOW)
    signals = Signals(
        methods=[
            MethodSignals("gateway", CREATE, rate=2.0),
            MethodSignals("agent", CREATE, rate=2.0),
            MethodSignals("gateway", SEARCH, rate=2.0, errors={"INVALID_ARGUMENT": 2.0}),
            MethodSignals("rag", SEARCH, rate=4.0, errors={"INVALID_ARGUMENT": 2.0}),
        ],
        instances={("rag", "v1", "127.0.0.1:3"): (4.0, 2.0)},
        breakers=[{"service": "gateway", "version": "v1", "target": "agent", "state": "open"}],
        scrape_up={},
    )
    graph = build([instance("gateway", 1), instance("agent", 2), instance("rag", 3)], signals, observed)
    edges = {(e["source"], e["target"]): e for e in graph["edges"]}
    assert set(edges) == {(CLIENT, "gateway"), ("gateway", "agent"), ("agent", "rag"), ("gateway", "rag")}
    assert edges[("agent", "rag")]["rate"] == pytest.approx(2.0)
    assert edges[("agent", "rag")]["error_rate"] == 0  # the bad requests were the client's, through the gateway
    assert edges[("gateway", "rag")]["rate"] == pytest.approx(2.0)
    assert edges[("gateway", "rag")]["error_rate"] == pytest.approx(1.0)
    assert edges[(CLIENT, "gateway")]["rate"] == pytest.approx(4.0)
    assert edges[("gateway", "agent")]["breaker"] == "open"
    rag = next(n for n in graph["nodes"] if n["id"] == "rag")
    assert rag["instances"][0]["rate"] == 4.0 and rag["instances"][0]["error_rate"] == 0.5


def test_without_prometheus_edges_are_span_counts_over_the_window() -> None:
    spans = [s for n in range(6) for s in spans_of_one_round(n)]
    graph = build([], None, observe_calls(spans, window_s=60, now_ns=NOW))
    edges = {(e["source"], e["target"]): e for e in graph["edges"]}
    assert graph["source"] == "traces"
    assert edges[("agent", "rag")]["rate"] == pytest.approx(6 / 60)
    # Services seen in traffic but not in discovery are still drawn, marked as unknown.
    assert {n["id"]: n["health"] for n in graph["nodes"]}["rag"] == "critical"


def test_spans_older_than_the_window_draw_no_edge() -> None:
    old = [replace(s, start_ns=NOW - 120 * 10**9) for s in spans_of_one_round(1)]
    assert observe_calls(old, window_s=60, now_ns=NOW).by_method == {}


async def test_an_instance_answering_not_serving_is_draining_and_one_not_answering_is_critical() -> None:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        assert (await probe(f"127.0.0.1:{port}"))[0] == "passing"
        await servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert await probe(f"127.0.0.1:{port}") == ("draining", "NOT_SERVING")
    finally:
        await server.stop(None)
    health_state, detail = await probe(f"127.0.0.1:{free_port()}", timeout_s=1)
    assert health_state == "critical" and "UNAVAILABLE" in detail


def test_the_canary_split_is_each_version_s_share_of_a_service_s_calls() -> None:
    signals = Signals(
        methods=[],
        instances={
            ("agent", "v1", "127.0.0.1:50062"): (9.0, 0.0),
            ("agent", "v2", "127.0.0.1:50072"): (1.0, 0.0),
            ("rag", "v1", "127.0.0.1:50063"): (5.0, 0.0),  # one version: no split to show
        },
        breakers=[],
        scrape_up={},
    )
    assert signals.canary_split() == {"agent": {"v1": pytest.approx(0.9), "v2": pytest.approx(0.1)}}
